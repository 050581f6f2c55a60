//go:build !race

package crashmatrix_test

const raceBuild = false
