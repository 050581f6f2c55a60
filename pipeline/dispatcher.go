package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ErrDispatcherHeld is returned (wrapped) by HoldDispatcher when another
// process is the repository's dispatcher.
var ErrDispatcherHeld = errors.New("another process is the dispatcher")

// DispatcherInfo says who holds the dispatcher lock.
type DispatcherInfo struct {
	PID   int       `toml:"pid"`
	Host  string    `toml:"host"`
	Since time.Time `toml:"since"`
}

// HoldDispatcher makes the calling process the repository's one dispatcher
// (watch) for as long as it lives: a lock the kernel drops if the process
// dies, so a killed watcher never blocks the next. When the lock is held
// elsewhere it returns ErrDispatcherHeld with the holder's record.
func (e *Env) HoldDispatcher() (release func(), holder DispatcherInfo, err error) {
	unlock, err := statefile.TryLock(e.Store.LockPath("watch"))
	if errors.Is(err, statefile.ErrLocked) {
		info, _ := e.dispatcherInfo()
		return nil, info, fmt.Errorf("%w: pid %d on %s since %s", ErrDispatcherHeld, info.PID, info.Host, info.Since.Local().Format(time.RFC3339))
	}
	if err != nil {
		return nil, DispatcherInfo{}, err
	}
	host, _ := procid.Host()
	info := DispatcherInfo{PID: os.Getpid(), Host: host, Since: time.Now().UTC()}
	data, _ := statefile.EncodeTOML(info) // the host name may be any bytes
	if err := statefile.Replace(e.dispatcherPath(), data); err != nil {
		unlock()
		return nil, DispatcherInfo{}, err
	}
	return unlock, info, nil
}

// WaitDispatcher is HoldDispatcher that waits (polling every poll) until the
// lock is free or ctx ends; onWait is told who holds it, once per holder.
func (e *Env) WaitDispatcher(ctx context.Context, poll time.Duration, onWait func(DispatcherInfo)) (func(), error) {
	var last DispatcherInfo
	for {
		release, holder, err := e.HoldDispatcher()
		if !errors.Is(err, ErrDispatcherHeld) {
			return release, err
		}
		if holder != last {
			onWait(holder)
			last = holder
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(poll):
		}
	}
}

func (e *Env) dispatcherPath() string { return filepath.Join(e.Store.Dir(), "watch.toml") }

func (e *Env) dispatcherInfo() (DispatcherInfo, error) {
	var info DispatcherInfo
	data, err := statefile.ReadFile(e.dispatcherPath(), statefile.MaxSizeDefault)
	if err != nil {
		return info, err
	}
	_, err = statefile.DecodeTOML(data, &info)
	return info, err
}
