package statefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrLockTimeout is returned (wrapped) when a lock could not be taken before
// the context's deadline.
var ErrLockTimeout = errors.New("lock not acquired before deadline")

// ErrLocked is returned (wrapped) by TryLock when another holder has the lock.
var ErrLocked = errors.New("locked by another process")

// LockTimeoutDefault bounds a lock wait when the caller's context has no
// deadline of its own: nothing in orch-hooks waits forever on a lock.
const LockTimeoutDefault = 10 * time.Second

// Retry backoff for a contended lock. flock(2) cannot be interrupted by a
// deadline, so waiting is a poll; it starts short so that a released lock is
// picked up within about a millisecond and backs off so that a long wait
// costs little.
const (
	lockPollMin = 200 * time.Microsecond
	lockPollMax = 8 * time.Millisecond
)

// Lock takes an exclusive lock on the lock file at path, creating it if
// needed, waiting until ctx is done (or LockTimeoutDefault if ctx has no
// deadline). The lock is released by calling unlock, or by the kernel when
// the process dies. Locks are per open file: two Lock calls in one process
// exclude each other like two processes do.
func Lock(ctx context.Context, path string) (unlock func(), err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LockTimeoutDefault)
		defer cancel()
	}
	f, err := openLockFile(path)
	if err != nil {
		return nil, err
	}
	wait := lockPollMin
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock %s: %w (%v)", path, ErrLockTimeout, context.Cause(ctx))
		case <-t.C:
		}
		if wait *= 2; wait > lockPollMax {
			wait = lockPollMax
		}
	}
}

// TryLock takes the lock at path only if it is free at once; otherwise it
// returns an error wrapping ErrLocked.
func TryLock(path string) (unlock func(), err error) {
	f, err := openLockFile(path)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// openLockFile opens (creating) a lock file with Open: a symlink, FIFO,
// socket or directory in its place is refused, never followed or waited on.
// A lock file this user may not open (one left by another user, such as
// root) is an error that names its owner and the fix.
func openLockFile(path string) (*os.File, error) {
	f, err := Open(path, os.O_RDWR|os.O_CREATE, Mode)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w%s", path, err, PermissionHint(err, path))
	}
	return f, nil
}
