package lease

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WaitRecheckDefault is how long a waiter that is woken by the file system
// when a lease record is removed sleeps at most between two looks anyway: a
// holder that dies or outlives its TTL removes nothing, so that is noticed
// within this long. Without notifications the waiter polls with a backoff
// up to WaitPollMax instead.
const WaitRecheckDefault = 250 * time.Millisecond

// dirWatch wakes a waiter when a lease record is removed from the leases
// directory (a release or a reclaim): the only change that can free a
// lease a live holder has. Waiters sleep instead of polling, which left 15
// waiting mergers reading the record hundreds of times a second while the
// holder's git processes needed the CPU; and they sleep through other
// changes (acquires, renewals, token counters, other targets), each of
// which used to wake every waiter for a look that could only find the
// lease held. It uses fsnotify (inotify, kqueue, ReadDirectoryChangesW), as
// watch does; the other changes reach its goroutine and are dropped there.
type dirWatch struct {
	w    *fsnotify.Watcher
	dir  string
	dead bool // the watch ended: the caller polls
}

// watchDir starts watching dir; nil when the file system cannot notify
// (the caller polls).
func watchDir(dir string) *dirWatch {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil
	}
	// Buffered, so that the changes between two waits (the look at the
	// lease) queue up here rather than in the kernel.
	w, err := fsnotify.NewBufferedWatcher(64)
	if err != nil {
		return nil
	}
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil
	}
	return &dirWatch{w: w, dir: filepath.Clean(dir)}
}

func (w *dirWatch) close() { w.w.Close() }

// alive reports whether wait can still be woken by a removal.
func (w *dirWatch) alive() bool { return !w.dead }

// wait returns when the file called name is removed, d passes or ctx ends.
// It drains what is queued when it returns, so each return stands for
// changes since the last. An overflowed queue, an error, or the directory
// removed also returns: the caller looks, as it would after d. A watch that
// ended returns at once and is no longer alive.
func (w *dirWatch) wait(ctx context.Context, d time.Duration, name string) {
	t := time.NewTimer(d)
	defer t.Stop()
	defer w.drain()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
		case ev, ok := <-w.w.Events:
			if !ok {
				w.dead = true
				return
			}
			if w.wakes(ev, name) {
				return
			}
		case _, ok := <-w.w.Errors:
			// An overflow lost changes, maybe the removal: look.
			w.dead = w.dead || !ok
			return
		}
	}
}

// wakes reports whether ev is the removal of name, or of the directory.
func (w *dirWatch) wakes(ev fsnotify.Event, name string) bool {
	if !ev.Has(fsnotify.Remove | fsnotify.Rename) {
		return false
	}
	p := filepath.Clean(ev.Name)
	return p == w.dir || filepath.Base(p) == name && filepath.Dir(p) == w.dir
}

// drain drops the changes queued now: they happened before the look that
// follows this wait.
func (w *dirWatch) drain() {
	for {
		select {
		case _, ok := <-w.w.Events:
			if !ok {
				w.dead = true
				return
			}
		case _, ok := <-w.w.Errors:
			if !ok {
				w.dead = true
				return
			}
		default:
			return
		}
	}
}
