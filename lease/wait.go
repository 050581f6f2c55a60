package lease

import (
	"bytes"
	"context"
	"encoding/binary"
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

// dirWatch wakes a waiter when a lease record is removed from the leases
// directory (a release or a reclaim): the only change that can free a
// lease a live holder has. Waiters sleep instead of polling, which left 15
// waiting mergers reading the record hundreds of times a second while the
// holder's git processes needed the CPU; and they sleep through other
// changes (acquires, renewals, token counters, other targets), each of
// which used to wake every waiter for a look that could only find the
// lease held.
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
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_DELETE_SELF); err != nil {
		unix.Close(fd)
		return nil
	}
	return &dirWatch{fd: fd}
}

func (w *dirWatch) close() { unix.Close(w.fd) }

// wait returns when the file called name is removed, d passes or ctx ends.
// It drains what it reads, so each return stands for changes since the
// last. An overflowed queue or a removed directory also returns: the
// caller looks, as it would after d.
func (w *dirWatch) wait(ctx context.Context, d time.Duration, name string) {
	deadline := time.Now().Add(d)
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	var buf [4096]byte
	for ctx.Err() == nil {
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		// Slices of at most 50 ms keep a cancelled context noticed.
		ms := int(min(left, 50*time.Millisecond) / time.Millisecond)
		n, err := unix.Poll(fds, max(ms, 1))
		if err == unix.EINTR || err == nil && n == 0 {
			continue
		}
		if err != nil {
			return
		}
		woken := false
		for {
			k, err := unix.Read(w.fd, buf[:])
			if k <= 0 || err != nil {
				break
			}
			woken = woken || removed(buf[:k], name)
		}
		if woken {
			return
		}
	}
}

// removed reports whether the inotify events in b include the removal of
// name, or an event that means "look anyway" (queue overflow, the watched
// directory gone).
func removed(b []byte, name string) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:8])
		n := int(binary.NativeEndian.Uint32(b[12:16]))
		if unix.SizeofInotifyEvent+n > len(b) {
			return true // cut short: look
		}
		if mask&(unix.IN_Q_OVERFLOW|unix.IN_DELETE_SELF|unix.IN_IGNORED) != 0 {
			return true
		}
		got := string(bytes.TrimRight(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+n], "\x00"))
		if mask&unix.IN_DELETE != 0 && got == name {
			return true
		}
		b = b[unix.SizeofInotifyEvent+n:]
	}
	return false
}
