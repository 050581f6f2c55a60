package statefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// oldLock and oldTryLock are the lock functions as they were before
// github.com/gofrs/flock became the primitive (a flock(2) of this package's
// own, backing off from 200 µs to 8 ms while it waits), kept here only so
// that BenchmarkLock measures old and new in the same run.
func oldLock(ctx context.Context, path string) (unlock func(), err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LockTimeoutDefault)
		defer cancel()
	}
	f, err := oldOpenLockFile(path)
	if err != nil {
		return nil, err
	}
	wait := 200 * time.Microsecond
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
		if wait *= 2; wait > 8*time.Millisecond {
			wait = 8 * time.Millisecond
		}
	}
}

func oldTryLock(path string) (unlock func(), err error) {
	f, err := oldOpenLockFile(path)
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

func oldOpenLockFile(path string) (*os.File, error) {
	f, err := Open(path, os.O_RDWR|os.O_CREATE, Mode)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w%s", path, err, PermissionHint(err, path))
	}
	return f, nil
}
