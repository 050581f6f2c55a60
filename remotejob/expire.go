package remotejob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// The observer's state in the state dir; its lock guards every
// read-modify-write of it.
const (
	seenFile = "remote-jobs-seen.toml"
	seenLock = "remote-jobs-seen"
)

// seenState is what this machine has observed of running shared jobs: per
// job id, the version it saw and when it first saw it.
type seenState struct {
	Version int                    `toml:"version"`
	Jobs    map[string]observation `toml:"jobs,omitempty"`
}

// observation is the first sighting of one version of a running job's
// record. FirstSeen is this machine's CLOCK_BOOTTIME then, on boot BootID:
// only a reading of the same boot is compared with it (a new boot starts
// over: the wait restarts, nothing expires early).
type observation struct {
	VersionID string        `toml:"version_id"`
	BootID    string        `toml:"boot_id"`
	FirstSeen time.Duration `toml:"first_seen_boottime"`
	// SeenAt is the wall clock then, for people; expiry never reads it.
	SeenAt time.Time `toml:"seen_at"`
}

func machineBoot() (time.Duration, string, error) {
	t, ok := gitstate.BootTime()
	if !ok {
		return 0, "", errors.New("CLOCK_BOOTTIME (or the time namespace's offset) cannot be read")
	}
	id, err := procid.BootID()
	if err != nil {
		return 0, "", fmt.Errorf("the boot id: %w", err)
	}
	return t, id, nil
}

func (q *Queue) bootNow() (time.Duration, string, error) {
	if q.boot != nil {
		return q.boot()
	}
	return machineBoot()
}

func (q *Queue) seenPath() string { return filepath.Join(q.StateDir, seenFile) }

// loadSeen reads the observations; a missing file is none.
func (q *Queue) loadSeen() (*seenState, error) {
	st := &seenState{Version: 1, Jobs: map[string]observation{}}
	data, err := statefile.ReadFile(q.seenPath(), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := statefile.DecodeTOML(data, st); err != nil {
		return nil, fmt.Errorf("%s: %w", q.seenPath(), err)
	}
	if st.Jobs == nil {
		st.Jobs = map[string]observation{}
	}
	return st, nil
}

// updateSeen applies fn to the observations under their lock and replaces
// the file atomically. An unreadable file is moved aside (kept, reported)
// and the observations start over: that only delays expiry by a TTL.
func (q *Queue) updateSeen(ctx context.Context, fn func(*seenState)) (warn error, err error) {
	if q.StateDir == "" {
		return nil, errors.New("no state dir to keep this machine's observations in (Queue.StateDir)")
	}
	locks := filepath.Join(q.StateDir, "locks")
	if err := os.MkdirAll(locks, 0o755); err != nil {
		return nil, err
	}
	unlock, err := statefile.Lock(ctx, filepath.Join(locks, seenLock+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, loadErr := q.loadSeen()
	if loadErr != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", q.seenPath(), time.Now().UnixNano())
		if err := os.Rename(q.seenPath(), aside); err != nil {
			return nil, fmt.Errorf("%v; moving it aside: %w", loadErr, err)
		}
		warn = fmt.Errorf("%v (moved to %s; observations start over, which delays expiry by a TTL)", loadErr, aside)
		st = &seenState{Version: 1, Jobs: map[string]observation{}}
	}
	fn(st)
	data, err := statefile.EncodeTOML(st)
	if err != nil {
		return warn, err
	}
	return warn, statefile.Replace(q.seenPath(), data)
}

type expiring struct {
	e         Entry
	unchanged time.Duration
}

func (q *Queue) expire(ctx context.Context) ([]Expiry, error) {
	if q.TTL <= 0 {
		return nil, fmt.Errorf("expire shared jobs: the heartbeat TTL must be positive (got %s); set [remote] heartbeat_ttl_s", q.TTL)
	}
	entries, err := q.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("expire: %w", err)
	}
	var out []Expiry
	var due []expiring
	var clockErr error
	warn, err := q.updateSeen(ctx, func(st *seenState) {
		// Read under the lock: two passes of this machine never measure
		// from each other's later readings.
		now, boot, err := q.bootNow()
		if err != nil {
			clockErr = err
			return
		}
		running := map[string]bool{}
		for _, e := range entries {
			id := strings.TrimPrefix(e.Name, Dir+"/")
			if e.Err != nil {
				out = append(out, Expiry{ID: id, Err: e.Err})
				continue
			}
			if e.Job.Status != gitstate.Running {
				continue
			}
			running[id] = true
			o, ok := st.Jobs[id]
			if !ok || o.VersionID != e.VersionID || o.BootID != boot || o.FirstSeen > now {
				st.Jobs[id] = observation{VersionID: e.VersionID, BootID: boot, FirstSeen: now, SeenAt: time.Now().UTC()}
				continue
			}
			if d := now - o.FirstSeen; d >= q.TTL {
				due = append(due, expiring{e: e, unchanged: d})
			}
		}
		for id := range st.Jobs {
			if !running[id] {
				delete(st.Jobs, id)
			}
		}
	})
	if err != nil {
		return out, fmt.Errorf("expire: this machine's observations of shared jobs: %w", err)
	}
	if clockErr != nil {
		return out, fmt.Errorf("expire: %w; no shared job expired (expiry is timed on this machine's boot clock only)", clockErr)
	}
	for _, d := range due {
		out = append(out, q.flipExpired(ctx, d))
	}
	if warn != nil {
		return out, fmt.Errorf("expire: this machine's observations of shared jobs: %w", warn)
	}
	return out, nil
}

// flipExpired writes failed over the very version the observer timed.
func (q *Queue) flipExpired(ctx context.Context, d expiring) Expiry {
	j := *d.e.Job
	x := Expiry{ID: j.ID, Host: j.Host, Unchanged: d.unchanged}
	next := j
	next.Status = gitstate.Failed
	next.Reason = fmt.Sprintf("heartbeat expired: no beat from %s for %s (seen by %s)", j.Host, roundSeen(d.unchanged), q.Host)
	next.EndedBy, next.EndedAt = "reaper:heartbeat@"+q.Host, q.now()
	up, err := q.prepare(ctx, &next, d.e.VersionID)
	if err != nil {
		x.Err = err
		return x
	}
	err = q.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
	switch {
	case err == nil:
		x.Won = true
	case errors.Is(err, refstore.ErrConflict):
		// The runner beat (or someone ended it) meanwhile: not expired.
	case errors.Is(err, refstore.ErrUnreachable) && q.landed(ctx, j.ID, up):
		x.Won = true
	default:
		x.Err = fmt.Errorf("expire %s: %w", q.where(j.ID), err)
	}
	return x
}

func roundSeen(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
