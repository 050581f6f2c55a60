package procidtest

import (
	"testing"

	"golang.org/x/sys/unix"
)

// WaitExited blocks until the child pid has exited but leaves it unreaped:
// a zombie, as a crashed job's process is until its parent waits for it.
func WaitExited(t testing.TB, pid int) {
	t.Helper()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatalf("waitid %d: %v", pid, err)
	}
}
