package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
)

// Exit codes a merge stage records as the job's exit code.
const (
	MergeExitOK       = 0
	MergeExitError    = 1 // local changes in the way, or a failure
	MergeExitRejected = 3 // conflict, not a fast-forward, lease busy, stale token, branch moved
)

// runMerge is the body of a merge stage: its gates are checked first (they
// describe the branch before the merge; after it, commits_ahead could not
// pass), then merge finalization runs under the target's lease, and its
// outcome is recorded as the exit code for the shared finalize.
//
// The merge merges exactly the commit the gates judged (merge.Request.
// Commit), never the branch's tip as found after the wait for the lease: if
// the branch moved meanwhile, the merge refuses (merge.ErrBranchMoved) and
// the job fails saying so; a retry judges the new tip. Refusing, rather
// than running the gates again under the lease, keeps a cmd: gate that may
// take minutes from holding every other merge into the target. A merge
// stage without gates merges the commit the previous stage's gates passed
// (Job.PrevCommit), or else the tip found when the job starts, with the
// same refusal if the branch moves.
func (e *Env) runMerge(ctx context.Context, j *gitstate.Job, self procid.Identity, stage config.Stage, sr *sharedRunner, say func(string, ...any)) (Result, error) {
	fail := func(reason string) (Result, error) {
		say("%s", reason)
		return e.Finalize(ctx, j.ID, Ending{EndedBy: gitstate.EndedByMonitor, Failure: reason})
	}
	wt, _ := e.FindWorktree(ctx, j)
	gates := e.EvaluateGates(ctx, GateInput{Stage: stage, Branch: j.Branch, Target: j.Target, Worktree: wt, Env: e.JobVars(j, wt)})
	var commit string
	if f := FirstFailed(gates); f == nil {
		switch {
		case len(gates) > 0:
			commit = JudgedCommit(gates)
		case j.PrevCommit != "":
			commit = j.PrevCommit
		default:
			commit, _ = e.Repo.ResolveCommit(ctx, "refs/heads/"+j.Branch)
		}
	}
	if _, err := e.whileRunning(ctx, j.ID, self, "", func(r *gitstate.Job) { r.Gates, r.Merging = gates, commit }); err != nil {
		return Result{Job: j}, err
	}
	if f := FirstFailed(gates); f != nil {
		return fail(fmt.Sprintf("gate %s failed: %s", f.Name, f.Detail))
	}
	if commit == "" {
		return fail(fmt.Sprintf("merge refused: no commit of %s to merge (the branch does not exist, or its gates judged no single commit)", j.Branch))
	}
	say("merging %s (%s) into %s", j.Branch, commit, j.Target)
	req := merge.Request{
		Branch: j.Branch, Target: j.Target, Commit: commit, Job: j.ID, Holder: "job " + j.ID,
		TTL:    e.Config.Lease.TTL(),
		Author: merge.Signature{Name: j.MergeAuthor.Name, Email: j.MergeAuthor.Email, When: j.StartedAt},
		Fence:  e.jobFence(j.ID, self),
	}
	if sr != nil {
		// A shared job's merge: through the remote's shared lease, the
		// target pushed there, each write fenced by a beat of the job's
		// record first (then by the local record, under its lock).
		if err := sr.fence(ctx, "merge", "the merge"); err != nil {
			return fail(sharedFailure(err))
		}
		local := req.Fence
		req.Remote, req.Shared, req.SendToken = e.remoteName(), e.Shared.Leases, e.Shared.SendToken
		req.Fence = func(ctx context.Context, effect func() error) error {
			if err := sr.fence(ctx, "merge", "the merge's push"); err != nil {
				return fmt.Errorf("merge not written: %s: %w", sharedFailure(err), errNotOurs)
			}
			return local(ctx, effect)
		}
	}
	m := merge.New(e.Repo)
	res, err := m.Merge(ctx, req)
	if sr != nil && res != nil && res.Pushed {
		crashpoint.Hit("shared.merge_pushed")
	}
	// The job's reason is the merge's own error, whatever the cause — the
	// conflicting paths, the local changes in the way, the lease's holder,
	// the stale token — never a guess from the exit code. It is recorded
	// with the exit code, so a reaper that finalizes the job after this
	// monitor died says the same.
	var failure string
	code := MergeExitOK
	var dirty *merge.DirtyError
	switch {
	case errors.Is(err, merge.ErrConflict) && res != nil && len(res.Conflicts) > 0:
		// The paths first: status shows a reason's beginning.
		code = MergeExitRejected
		failure = fmt.Sprintf("merge refused: conflict in %s (%s into %s)", pathList(res.Conflicts), j.Branch, j.Target)
	case errors.As(err, &dirty) && res != nil && !res.Written:
		code = MergeExitError
		failure = fmt.Sprintf("merge refused: local changes in %s, which the merge changes, in %s's checkout %s; commit or stash them there, then orch-hooks retry %s",
			pathList(dirty.Paths), j.Target, dirty.Worktree, j.ID)
	case errors.Is(err, merge.ErrBranchMoved):
		code = MergeExitRejected
		failure = fmt.Sprintf("merge refused: %v; orch-hooks retry %s judges the new tip", err, j.ID)
	case errors.Is(err, merge.ErrConflict), errors.Is(err, merge.ErrNotFastForward),
		errors.Is(err, lease.ErrBusy), errors.Is(err, lease.ErrStaleToken):
		code = MergeExitRejected
		failure = fmt.Sprintf("merge refused: %v", err)
	case err != nil:
		code = MergeExitError
		failure = fmt.Sprintf("merge failed: %v", err)
		if res != nil && res.Written {
			// The target moved and what came after failed (the worktree's
			// index not put in place): say both.
			failure = fmt.Sprintf("merge failed after %s moved to %s: %v", j.Target, res.NewTarget, err)
		}
	}
	if failure != "" {
		say("%s", failure)
	} else {
		say("merge: %s, %s is at %s", res.Kind, j.Target, res.NewTarget)
	}
	now := time.Now().UTC()
	if _, err := e.whileRunning(ctx, j.ID, self, "", func(r *gitstate.Job) {
		r.ExitCode, r.FinishedAt = &code, now
		if failure != "" {
			r.Reason = failure
		}
	}); err != nil {
		say("exit code not recorded: %v", err)
		return e.Finalize(ctx, j.ID, Ending{EndedBy: gitstate.EndedByMonitor, Failure: failure})
	}
	crashpoint.Hit("run.exit_recorded")
	return e.Finalize(ctx, j.ID, Ending{EndedBy: gitstate.EndedByMonitor, Failure: failure})
}

// jobFence is a merge job's part of the merge's fence (DESIGN.md: "a merge
// job's status is part of the merge's fence"): the merger calls it under
// the lease lock right before each ref update and push, and the write runs
// under the job's lock only while the job is still running under this
// monitor, so a cancel or a reaper's claim cannot come between the check
// and the write. Lock order: lease lock, then job lock; nothing takes the
// job lock and then a lease lock.
func (e *Env) jobFence(id string, self procid.Identity) func(context.Context, func() error) error {
	return func(ctx context.Context, effect func() error) error {
		unlock, err := e.Store.Lock(ctx, id)
		if err != nil {
			return err
		}
		defer unlock()
		cur, err := e.Store.Get(id)
		if err != nil {
			return err
		}
		if cur.Status != gitstate.Running || cur.Monitor != self {
			return fmt.Errorf("merge not written: job %s is %s: %w", id, cur.Status, errNotOurs)
		}
		return effect()
	}
}

// pathList joins paths for a job's reason, naming at most ten.
func pathList(paths []string) string {
	const most = 10
	if len(paths) <= most {
		return strings.Join(paths, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(paths[:most], ", "), len(paths)-most)
}
