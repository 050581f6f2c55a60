//go:build darwin || freebsd

package pipeline

import (
	"os"

	"golang.org/x/sys/unix"
)

// punchHole is not implemented on macOS and FreeBSD (fcntl F_PUNCHHOLE
// and fspacectl are not in x/sys): the log cap turns itself off, saying
// so in the log, and the log grows with the output.
func punchHole(f *os.File, off, n int64) error { return unix.EOPNOTSUPP }

// pidfdOpen: there are no pidfds; waitGone polls.
func pidfdOpen(pid int) (int, error) { return -1, unix.ENOSYS }
