//go:build race

package crashmatrix_test

// raceBuild: under -race every process these tests start runs 5-10 times
// slower. The default (CI) sizes shrink so the package stays well inside
// CI's time; the long runs name their sizes with flags and are unchanged.
const raceBuild = true
