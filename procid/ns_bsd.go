//go:build darwin || freebsd

package procid

// macOS has no pid namespaces and FreeBSD's jails share one pid space: a
// pid means the same process to every reader on the machine, and an
// identity records no namespace (0, judged as the reader's own).
func readPidNS() (uint64, error) { return 0, nil }

// Neither kernel has time namespaces: nothing shifts the start times.
func readBootOffset() (int64, error) { return 0, nil }
