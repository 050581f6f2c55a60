package pipeline

import (
	"os"

	"golang.org/x/sys/unix"
)

// punchHole makes [off, off+n) of f a hole, keeping its size.
func punchHole(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// pidfdOpen opens a pidfd for pid: readable once it has exited.
func pidfdOpen(pid int) (int, error) { return unix.PidfdOpen(pid, 0) }
