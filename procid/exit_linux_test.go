package procid

import (
	"testing"

	"golang.org/x/sys/unix"
)

// waitExitedNoReap blocks until pid has exited but leaves it unreaped: a
// zombie, as a crashed job's process is until its parent waits for it.
func waitExitedNoReap(t *testing.T, pid int) {
	t.Helper()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatalf("waitid %d: %v", pid, err)
	}
}
