//go:build darwin || freebsd

package procidtest

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/procid"
)

// WaitExited blocks until the child pid has exited but leaves it unreaped:
// a zombie, as a crashed job's process is until its parent waits for it.
// There is no waitid(WNOWAIT) here: a kqueue EVFILT_PROC NOTE_EXIT event
// says the exit without reaping (a child already exited cannot be
// registered, ESRCH, and is a zombie already).
func WaitExited(t testing.TB, pid int) {
	t.Helper()
	kq, err := unix.Kqueue()
	if err != nil {
		t.Fatalf("kqueue: %v", err)
	}
	defer unix.Close(kq)
	var ev [1]unix.Kevent_t
	unix.SetKevent(&ev[0], pid, unix.EVFILT_PROC, unix.EV_ADD|unix.EV_ONESHOT)
	ev[0].Fflags = unix.NOTE_EXIT
	for {
		var n int
		n, err = unix.Kevent(kq, ev[:], ev[:], nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		// With room for events, a registration that failed comes back
		// as an EV_ERROR event holding the errno.
		if err == nil && n == 1 && ev[0].Flags&unix.EV_ERROR != 0 {
			err = unix.Errno(ev[0].Data)
		}
		break
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		t.Fatalf("kevent NOTE_EXIT for pid %d: %v", pid, err)
	}
	if st, err := procid.ReadStat(pid); err != nil || st.State != 'Z' {
		t.Fatalf("pid %d after its exit: %+v, %v; want a zombie", pid, st, err)
	}
}
