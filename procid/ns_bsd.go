//go:build darwin || freebsd

package procid

// Neither kernel has time namespaces: nothing shifts the start times.
func readBootOffset() (int64, error) { return 0, nil }
