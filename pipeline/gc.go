package pipeline

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// GCReport is what GC removed (or, dry, would remove) and kept.
type GCReport struct {
	Jobs      []string `json:"jobs"`       // records (and logs, locks) removed
	Worktrees []string `json:"worktrees"`  // linked worktrees removed
	KeptDirty []string `json:"kept_dirty"` // worktrees with uncommitted changes, kept with their jobs
	Temps     []string `json:"temps"`      // temporary files crashes left behind
	Bytes     int64    `json:"bytes"`      // bytes of records and logs freed
	DryRun    bool     `json:"dry_run"`
}

// tempAge is how old a temporary file must be before gc takes it for one a
// crash abandoned (a live write lasts milliseconds).
const tempAge = time.Hour

// GC removes the records, logs and lock files of jobs that ended more than
// olderThan ago, and the worktrees of tasks all of whose jobs are removed.
// A worktree with uncommitted changes is kept, with its task's records so
// the next gc sees it again, unless force. Only worktrees under the
// configured worktrees dir are ever removed; branches are never touched.
// Unreadable records are never removed. Each collected job id leaves a
// tombstone (Store.Tombstone) that gc never removes, so the id is never
// created, and never runs, again; a dry run writes none.
func (e *Env) GC(ctx context.Context, olderThan time.Duration, dryRun, force bool) (GCReport, error) {
	rep := GCReport{DryRun: dryRun, Jobs: []string{}, Worktrees: []string{}, KeptDirty: []string{}, Temps: []string{}}
	l, err := e.Store.All()
	if err != nil {
		return rep, err
	}
	now := time.Now()
	old := func(j *gitstate.Job) bool {
		if !j.Status.Terminal() || j.EndedAt.IsZero() {
			return false
		}
		age := now.Sub(j.EndedAt)
		return age >= 0 && age >= olderThan
	}
	byTask := map[string][]*gitstate.Job{}
	activeBranch := map[string]bool{}
	for _, j := range l.Jobs {
		byTask[j.Task] = append(byTask[j.Task], j)
		if !j.Status.Terminal() {
			activeBranch[j.Branch] = true
		}
	}
	// A done job whose next job a crash lost is the reaper's only way to
	// repair the advance: it stays until the next job exists.
	collectable := func(j *gitstate.Job) bool { return old(j) && !e.NeedsAdvance(j) }
	// In task order, so the report (and gc --json) is the same every run.
	for _, task := range slices.Sorted(maps.Keys(byTask)) {
		jobs := byTask[task]
		all := true
		for _, j := range jobs {
			all = all && collectable(j)
			// Another task's active job may run in this worktree (two tasks
			// on one branch share the checkout).
			all = all && !activeBranch[j.Branch]
		}
		if all {
			removed, dirty, err := e.removeTaskWorktree(ctx, task, jobs, dryRun, force)
			if err != nil {
				return rep, err
			}
			switch {
			case dirty != "":
				rep.KeptDirty = append(rep.KeptDirty, dirty)
				continue // keep the task's records too
			case removed != "":
				rep.Worktrees = append(rep.Worktrees, removed)
			}
		}
		for _, j := range jobs {
			if !collectable(j) {
				continue
			}
			for _, p := range []string{e.Store.RecordPath(j.ID), e.Store.LogPath(j.ID)} {
				if fi, err := os.Stat(p); err == nil {
					rep.Bytes += fi.Size()
				}
			}
			if !dryRun {
				if err := e.collect(ctx, j.ID); err != nil {
					return rep, err
				}
			}
			rep.Jobs = append(rep.Jobs, j.ID)
		}
	}
	for _, dir := range []string{filepath.Join(e.Store.Dir(), "jobs"), filepath.Join(e.Store.Dir(), "leases"), e.Store.Dir()} {
		ents, _ := os.ReadDir(dir)
		for _, ent := range ents {
			if !statefile.IsTemp(ent.Name()) {
				continue
			}
			fi, err := ent.Info()
			if err != nil || now.Sub(fi.ModTime()) < tempAge {
				continue
			}
			p := filepath.Join(dir, ent.Name())
			if !dryRun {
				os.Remove(p)
			}
			rep.Temps = append(rep.Temps, p)
		}
	}
	if !dryRun && len(rep.Worktrees) > 0 {
		gitstate.Git(ctx, e.gitDir(), "worktree", "prune")
	}
	return rep, nil
}

// removeTaskWorktree removes task's worktree, if there is one, deciding
// afresh under the task's lock, which a job's start holds from before
// EnsureWorktree until its command has started: the listing gc began with
// is old by the time it reaches the task (a retry may have been enqueued
// and started since). Under the lock, the worktree stays if a queued or
// running job of the task, or of a branch of its jobs, exists now, or if it has uncommitted changes and not
// force (dirty names it). removed names the worktree removed (or, dry,
// that would be).
func (e *Env) removeTaskWorktree(ctx context.Context, task string, jobs []*gitstate.Job, dryRun, force bool) (removed, dirty string, err error) {
	wt := e.WorktreePath(task)
	if _, err := os.Stat(wt); err != nil {
		return "", "", nil
	}
	unlock, err := e.lockTask(ctx, task)
	if err != nil {
		return "", "", fmt.Errorf("gc: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(wt); err != nil {
		return "", "", nil
	}
	branches := map[string]bool{}
	for _, j := range jobs {
		branches[j.Branch] = true
	}
	st, active, err := e.worktreeInUse(ctx, wt, task, branches)
	switch {
	case err != nil:
		return "", "", fmt.Errorf("gc: worktree %s: %w", wt, err)
	case st != "" && !force:
		return "", wt, nil
	case active != nil:
		return "", "", nil // in use now: the next gc looks again
	}
	if !dryRun {
		args := []string{"worktree", "remove", wt}
		if force {
			args = []string{"worktree", "remove", "--force", wt}
		}
		if _, err := gitstate.Git(ctx, e.gitDir(), args...); err != nil {
			return "", "", fmt.Errorf("gc: %w", err)
		}
	}
	return wt, "", nil
}

// collect removes ended job id's record, log and lock file, leaving its
// tombstone. The tombstone is written first, so a crash in between leaves
// the record (the id still exists, and the next gc collects it) and never
// an id with neither. Both happen under the job's lock, which Create takes
// too: no enqueue sees the record gone before the tombstone is there.
func (e *Env) collect(ctx context.Context, id string) error {
	unlock, err := e.Store.Lock(ctx, id)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	defer unlock()
	if err := e.Store.Tombstone(id); err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	crashpoint.Hit("gc.tombstoned")
	return e.Store.Remove(id)
}

// worktreeInUse is what keeps a task's worktree wt, asked under the task's
// lock by every path that removes one (gc, and a merged task's removal):
// its uncommitted changes (git status --porcelain -z, untracked files
// included; "" when clean) and a queued or running job of the task or of
// one of branches. The active jobs are listed last, right before the
// caller removes: a job enqueued while git status ran counts.
func (e *Env) worktreeInUse(ctx context.Context, wt, task string, branches map[string]bool) (status string, active *gitstate.Job, err error) {
	status, err = gitstate.Git(ctx, wt, "status", "--porcelain", "-z")
	if err != nil {
		return "", nil, fmt.Errorf("git status: %w", err)
	}
	l, err := e.Store.Active()
	if err != nil {
		return "", nil, err
	}
	for _, a := range l.Jobs {
		if a.Task == task || branches[a.Branch] {
			return status, a, nil
		}
	}
	return status, nil, nil
}
