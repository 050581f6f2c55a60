package lease

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// WaitRecheckDefault is how long a waiter that is woken by the kernel when
// a lease record is removed sleeps at most between two looks anyway: a
// holder that dies or outlives its TTL removes nothing, so that is noticed
// within this long. Without inotify the waiter polls with a backoff up to
// WaitPollMax instead.
const WaitRecheckDefault = 250 * time.Millisecond

// dirWatch wakes a waiter when a file in the leases directory is removed
// (a release or a reclaim) or renamed into it (an acquire or renewal).
// Waiters sleep instead of polling, which left 15 waiting mergers reading
// the record hundreds of times a second while the holder's git processes
// needed the CPU.
type dirWatch struct{ fd int }

// watchDir starts watching dir; nil when inotify is unavailable (the
// caller polls).
func watchDir(dir string) *dirWatch {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_MOVED_TO|unix.IN_DELETE_SELF); err != nil {
		unix.Close(fd)
		return nil
	}
	return &dirWatch{fd: fd}
}

func (w *dirWatch) close() { unix.Close(w.fd) }

// wait returns when an event arrives, d passes or ctx ends, and drains
// the events, so each wake-up stands for changes since the last look.
func (w *dirWatch) wait(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	for ctx.Err() == nil {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		// Slices of at most 50 ms keep a cancelled context noticed.
		ms := int(min(left, 50*time.Millisecond) / time.Millisecond)
		n, err := unix.Poll(fds, max(ms, 1))
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			var buf [4096]byte
			for {
				if k, err := unix.Read(w.fd, buf[:]); k <= 0 || err != nil {
					break
				}
			}
			return
		}
	}
}
