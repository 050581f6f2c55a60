package merge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// OwedSync is one pending worktree move (merges/<target>.toml) that
// FinishOwed looked at.
type OwedSync struct {
	Target string
	// Path is set, with Err, for a record that could not be read: it is
	// reported and left in place.
	Path string
	// Finished: the move was finished or undone and its record cleared.
	Finished bool
	// Busy: another process holds the target's lease; whoever holds it
	// finishes the move (every merge does, first), or a later pass does.
	Busy bool
	// Err is why the move could not be finished (the record stays).
	Err error
}

// owedLeaseTTL is the TTL of the lease FinishOwed takes: a finish is a few
// git processes, and a crashed finisher's lease frees itself by its
// owner's death long before this.
const owedLeaseTTL = 5 * time.Minute

// Owed lists the targets that have a pending worktree move on record.
func (m *Merger) Owed() ([]string, error) {
	targets, _, err := m.owed()
	return targets, err
}

// owed is Owed that also returns the records it could not read.
func (m *Merger) owed() ([]string, []OwedSync, error) {
	dir := filepath.Dir(m.pendingPath("x"))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list pending worktree moves: %w", err)
	}
	var targets []string
	var bad []OwedSync
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".toml") {
			continue // temp files of a record being replaced
		}
		path := filepath.Join(dir, e.Name())
		// The record names its target; the file name is only its escaped
		// form. One that cannot be read or does not name the target whose
		// record it is (planted, damaged) is reported and left in place.
		data, err := statefile.ReadFile(path, statefile.MaxSizeDefault)
		if err != nil {
			bad = append(bad, OwedSync{Path: path, Err: err})
			continue
		}
		var p pending
		if _, err := toml.Decode(string(data), &p); err != nil {
			bad = append(bad, OwedSync{Path: path, Err: fmt.Errorf("pending worktree move %s does not parse: %w", path, err)})
			continue
		}
		if p.Target == "" || m.pendingPath(p.Target) != path {
			bad = append(bad, OwedSync{Path: path, Err: fmt.Errorf("pending worktree move %s names target %q, not the one its name is for; restore or remove it", path, p.Target)})
			continue
		}
		targets = append(targets, p.Target)
	}
	sort.Strings(targets)
	return targets, bad, nil
}

// FinishOwed finishes every pending worktree move it can take the lease of
// at once (never waiting: a held lease's holder finishes the move before it
// merges): for each, TryAcquire the target's lease as holder, finishSync
// under it, release. A crash just after a merge's ref update thus leaves
// the checked-out target's worktree behind only until the next caller
// (a reaper pass: hooks, watch, reap), not until the next merge into that
// target. dryRun lists the owed moves and does nothing.
func (m *Merger) FinishOwed(ctx context.Context, holder string, dryRun bool) ([]OwedSync, error) {
	targets, out, err := m.owed()
	if err != nil || len(targets) == 0 {
		return out, err
	}
	if dryRun {
		for _, t := range targets {
			out = append(out, OwedSync{Target: t})
		}
		return out, nil
	}
	owner, err := procid.Self()
	if err != nil {
		return nil, err
	}
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		o := OwedSync{Target: t}
		l, err := m.Leases.TryAcquire(ctx, t, lease.Request{Holder: holder, Owner: owner, TTL: owedLeaseTTL})
		switch {
		case errors.Is(err, lease.ErrBusy):
			o.Busy = true
		case err != nil:
			o.Err = err
		default:
			owed, err := m.finishSync(ctx, t, l.Token)
			o.Finished, o.Err = owed && err == nil, err
			if rerr := m.Leases.Release(context.WithoutCancel(ctx), t, l.Token); rerr != nil && o.Err == nil {
				o.Err = fmt.Errorf("release the lease of %s: %w", t, rerr)
			}
		}
		out = append(out, o)
	}
	return out, nil
}
