package statefile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/gofrs/flock"
)

// ErrLockTimeout is returned (wrapped) when a lock could not be taken before
// the context's deadline.
var ErrLockTimeout = errors.New("lock not acquired before deadline")

// ErrLocked is returned (wrapped) by TryLock when another holder has the lock.
var ErrLocked = errors.New("locked by another process")

// LockTimeoutDefault bounds a lock wait when the caller's context has no
// deadline of its own: nothing in orch-hooks waits forever on a lock.
const LockTimeoutDefault = 10 * time.Second

// How often a contended lock is tried again. A blocking flock(2) cannot be
// given a deadline, so a wait is a poll of the non-blocking try. The
// interval is a sixteenth of the time waited so far, kept between
// lockPollMin and lockPollMax: a lock held a few milliseconds (a record
// update) is picked up about as soon as the scheduler allows, a wait is
// made longer by at most about a sixteenth of itself until lockPollMax,
// and a long wait costs one try per lockPollMax. A try costs more than it
// did (flock.Flock opens and closes the file on every try that fails: ~16
// µs of CPU against ~2.5 µs for a flock(2) on a kept descriptor), so a
// fixed 1 ms poll was not chosen: it hands a lock held 20 ms over a little
// sooner (1.1-1.2 ms late against 1.5-1.9 ms) but makes three times the
// tries of a 200 ms wait (137 against 42), and more the longer the wait.
// The interval backed off by doubling from 200 µs to 8 ms before: a lock
// held 20 ms was picked up 5.4-5.9 ms late (BenchmarkLockHandOff;
// docs/PERFORMANCE.md "Locks").
const (
	lockPollMin   = 250 * time.Microsecond
	lockPollMax   = 8 * time.Millisecond
	lockPollShare = 16
)

// lockFlags open a lock file: read-write (an exclusive lock where flock(2)
// is emulated with fcntl locks, as on NFS, needs a writable descriptor),
// never following a symlink, never blocking in open(2) (a FIFO planted at
// the name would otherwise hang the caller), not inherited by children. No
// O_CREATE: a missing lock file is created by Open, which gives it Mode
// exactly whatever the umask.
const lockFlags = os.O_RDWR | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC

// Lock takes an exclusive lock on the lock file at path, creating it if
// needed, waiting until ctx is done (or LockTimeoutDefault if ctx has no
// deadline). The lock is released by calling unlock, or by the kernel when
// the process dies. Locks are per open file: two Lock calls in one process
// exclude each other like two processes do. On timeout the error wraps
// ErrLockTimeout; a lock file that is not a regular file is refused with
// ErrNotRegular, never waited on.
func Lock(ctx context.Context, path string) (unlock func(), err error) {
	return lock(ctx, path, pollInterval)
}

// pollInterval is the wait before the next try of a lock after waited.
func pollInterval(waited time.Duration) time.Duration {
	return min(max(waited/lockPollShare, lockPollMin), lockPollMax)
}

func lock(ctx context.Context, path string, poll func(waited time.Duration) time.Duration) (unlock func(), err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LockTimeoutDefault)
		defer cancel()
	}
	l := newLockFile(path)
	start := time.Now()
	for {
		unlock, err := l.try()
		if !errors.Is(err, ErrLocked) {
			return unlock, err
		}
		t := time.NewTimer(poll(time.Since(start)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock %s: %w (%v)", path, ErrLockTimeout, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// TryLock takes the lock at path only if it is free at once; otherwise it
// returns an error wrapping ErrLocked.
func TryLock(path string) (unlock func(), err error) {
	return newLockFile(path).try()
}

// lockFile is one acquisition of one lock file. The primitive is
// github.com/gofrs/flock (flock(2) here, LockFileEx on Windows), with a new
// *flock.Flock for every acquisition: a *flock.Flock answers "locked" to
// every caller once one of them holds it, so sharing one between
// goroutines would let both in. flock.Flock opens the file by path itself,
// so what this package guarantees of every state file is kept around it:
// the flags (lockFlags) refuse a symlink, a socket and a directory in
// open(2) and never block on a FIFO; the held descriptor is checked to be
// a regular file before the lock is handed out (a FIFO opens read-write
// without blocking, and flock(2) locks it); a missing lock file is created
// by Open (exact mode, the same refusals).
type lockFile struct {
	path string
	fl   *flock.Flock
}

func newLockFile(path string) *lockFile {
	return &lockFile{path: path, fl: flock.New(path, flock.SetFlag(lockFlags), flock.SetPermissions(Mode))}
}

// try takes the lock if it is free: an error wrapping ErrLocked if it is
// not, ErrNotRegular if the file is not a regular file.
func (l *lockFile) try() (unlock func(), err error) {
	ok, err := l.fl.TryLock()
	if errors.Is(err, fs.ErrNotExist) {
		// The first use of this lock file (they are never removed).
		f, cerr := Open(l.path, os.O_RDWR|os.O_CREATE, Mode)
		if cerr != nil {
			return nil, lockError(l.path, cerr)
		}
		f.Close()
		ok, err = l.fl.TryLock()
	}
	switch {
	case errors.Is(err, syscall.EINTR):
		// A try interrupted by a signal is a try to make again.
		return nil, fmt.Errorf("lock %s: %w", l.path, ErrLocked)
	case err != nil:
		return nil, lockError(l.path, openError(l.path, err))
	case !ok:
		// Held by another: but if what is there is no lock file, say so
		// rather than wait on it.
		if fi, err := os.Lstat(l.path); err == nil && !fi.Mode().IsRegular() {
			return nil, lockError(l.path, NotRegular(l.path, fi.Mode()))
		}
		return nil, fmt.Errorf("lock %s: %w", l.path, ErrLocked)
	}
	// fstat of the descriptor now locked: whatever the name held when it
	// was opened, this is what the lock is on.
	fi, err := l.fl.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = NotRegular(l.path, fi.Mode())
	}
	if err != nil {
		l.fl.Unlock()
		return nil, lockError(l.path, err)
	}
	return func() { l.fl.Unlock() }, nil
}

// lockError names the lock file and, for a permission error, its owner and
// the fix.
func lockError(path string, err error) error {
	return fmt.Errorf("lock %s: %w%s", path, err, PermissionHint(err, path))
}
