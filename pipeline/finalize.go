package pipeline

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

// Ending says who is ending a running job and, for an ending decided before
// any gate is looked at, why it fails.
type Ending struct {
	// EndedBy is recorded as the job's ended_by (gitstate.EndedBy*).
	EndedBy string
	// Failure, when set, fails the job with this reason without evaluating
	// gates: "lost", "timeout", a finalize step that failed.
	Failure string
	// OnlyIf, when set, is checked against the current record inside the
	// claim, next to "still running": the reaper uses it to claim only the
	// state it judged (for example, no exit code recorded yet).
	OnlyIf func(j *gitstate.Job) bool
}

// Result is the outcome of Finalize.
type Result struct {
	// Job is the record after the attempt: ended by this call if Won, else
	// as the winner (or nobody yet) left it.
	Job *gitstate.Job
	// Won reports whether this call claimed the terminal status.
	Won bool
	// Next is the job this one advanced to, when it did.
	Next *gitstate.Job
	// Worktree says, for a person, what became of the task's worktree
	// when this call ended a merge job done (RemoveMergedWorktree); "" when
	// there was nothing to say.
	Worktree string
}

// Finalize ends a running job: the one code path shared by the monitor and
// the reaper. It evaluates the stage's gates read-only, chooses done or
// failed, claims that status atomically — the claim writes next_job in the
// same write — and only if the claim was won, advances to the next stage.
// A loser (the job was no longer running) performs no side effect at all.
//
// Gates, cmd: gates included, are not fenced like finalize steps: they run
// before the claim in whoever finalizes — the monitor and any number of
// racing reaper passes — so a cmd: gate must be a read-only check. A job
// seen ended before the gates runs none of them.
//
// A shared job (SharedRun set, remote mode) is not advanced here: the
// winner settles it on the remote (its end, the next stage's job queued
// there, its branch pushed as a fast-forward) in one atomic write, and a
// branch that can no longer land as a fast-forward fails it before the
// claim. A settle that does not land now is left to the settle repair of
// this machine's next SharedPass.
func (e *Env) Finalize(ctx context.Context, id string, end Ending) (Result, error) {
	j, err := e.Store.Get(id)
	if err != nil {
		return Result{}, err
	}
	if j.Status != gitstate.Running {
		return Result{Job: j}, nil
	}
	status, reason, gates := gitstate.Failed, end.Failure, []gitstate.GateResult(nil)
	stage, stageOK := e.Config.Stage(j.Stage)
	switch {
	case stageOK && stage.Kind == config.KindMerge && e.landed(ctx, j, end):
		// The merge moved the target and its monitor died before it could
		// record so: the graph is the record of what happened.
		status, reason = gitstate.Done, fmt.Sprintf("merged (%s found in %s after the merge job's monitor ended)", shortID(j.Merging), j.Target)
	case reason != "":
	case !stageOK:
		reason = fmt.Sprintf("stage %q is not defined in orch.toml", j.Stage)
	case j.ExitCode == nil:
		return Result{Job: j}, fmt.Errorf("job %s: no exit code recorded, so there is nothing to finalize yet", id)
	case *j.ExitCode != 0 && stage.Kind == config.KindMerge && j.Reason != "":
		// The merge stage recorded its cause with the exit code.
		reason = j.Reason
	case *j.ExitCode != 0 && stage.Kind == config.KindMerge:
		reason = fmt.Sprintf("merge exit code %d (see orch-hooks logs %s)", *j.ExitCode, j.ID)
	case *j.ExitCode == exitNotFound:
		wt, _ := e.FindWorktree(ctx, j)
		reason = "exit code 127: " + notFoundHint(stage.Run, wt, j) + " (the shell's message: orch-hooks logs " + j.ID + ")"
	case *j.ExitCode != 0:
		reason = "exit code " + strconv.Itoa(*j.ExitCode)
	case stage.Kind == config.KindMerge:
		// A merge stage's gates were checked before the merge, which they
		// describe; the recorded exit code is the outcome.
		status, reason = gitstate.Done, "merged"
	default:
		var wt string
		if needsWorktree(stage) {
			wt, _ = e.FindWorktree(ctx, j)
		}
		gates = e.EvaluateGates(ctx, GateInput{Stage: stage, Branch: j.Branch, Target: j.Target, Worktree: wt, Env: e.JobVars(j, wt)})
		if f := FirstFailed(gates); f != nil {
			reason = fmt.Sprintf("gate %s failed: %s", f.Name, f.Detail)
		} else {
			status, reason = gitstate.Done, "exit code 0"
			if len(gates) > 0 {
				reason += ", every gate passed"
			}
		}
	}
	shared := j.SharedRun != ""
	if shared && status == gitstate.Done {
		// Its work lands on the remote with its settle, as a fast-forward
		// only: a branch someone pushed to meanwhile fails it here first.
		if moved := e.branchMovedReason(ctx, j); moved != "" {
			status, reason = gitstate.Failed, moved
		}
	}
	var next string
	if status == gitstate.Done && stage.Next != "" && !shared {
		// A shared job's next stage is queued on the remote by its
		// settle, for any machine: no local advance.
		next = gitstate.JobID(j.Task, stage.Next, j.Attempt)
	}
	j, err = e.Store.Update(ctx, id, reason, func(j *gitstate.Job) error {
		if j.Status != gitstate.Running || (end.OnlyIf != nil && !end.OnlyIf(j)) {
			return gitstate.ErrSkip
		}
		j.Status, j.Reason, j.EndedBy, j.NextJob = status, reason, end.EndedBy, next
		if gates != nil {
			j.Gates = gates
		}
		return nil
	})
	if errors.Is(err, gitstate.ErrSkip) {
		return Result{Job: j}, nil
	}
	if err != nil {
		return Result{Job: j}, err
	}
	crashpoint.Hit("finalize.claimed")
	res := Result{Job: j, Won: true}
	if shared {
		// The remote decides: the end, the next job and the branch land
		// in one Settle, or (lost) nothing does. Unreachable: the settle
		// repair of a later pass on this machine pushes it.
		if _, serr := e.settleShared(ctx, j); serr != nil {
			if errors.Is(serr, remotejob.ErrLost) {
				e.logLine(j.ID, fmt.Sprintf("not settled on the remote: %v", serr))
			} else {
				e.logLine(j.ID, fmt.Sprintf("not settled on the remote yet (the next dispatch or reap on this machine retries): %v", serr))
			}
		}
	}
	if next != "" {
		res.Next, err = e.Advance(ctx, j)
	}
	if status == gitstate.Done && stage.Kind == config.KindMerge {
		// After the advance: a next stage's job keeps the worktree.
		if res.Worktree = e.RemoveMergedWorktree(ctx, j); res.Worktree != "" {
			e.logLine(j.ID, res.Worktree)
		}
	}
	return res, err
}

// logLine appends a line of orch-hooks' own to job id's log, where a person
// reads what happened to a job that ran detached. Best effort: the log is
// not the record.
func (e *Env) logLine(id, line string) {
	f, err := e.Store.OpenLog(id)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "== orch-hooks %s: %s\n", time.Now().UTC().Format(time.RFC3339), line)
}

// landed reports whether a merge job a reaper is ending (its monitor gone:
// tier 1, or tier 2 with an exit code that is not a refusal) merged what it
// set out to: the commit its gates passed (Job.Merging) is in the target.
// A job refused by the merge (exit code 3) or never past its gates is not;
// one that recorded exit code 0 ends "merged" by the ordinary path.
func (e *Env) landed(ctx context.Context, j *gitstate.Job, end Ending) bool {
	if end.EndedBy != gitstate.EndedByReaperDead && end.EndedBy != gitstate.EndedByReaperExitCode {
		return false
	}
	if j.Merging == "" || FirstFailed(j.Gates) != nil || (j.ExitCode != nil && (*j.ExitCode == MergeExitOK || *j.ExitCode == MergeExitRejected)) {
		return false
	}
	t, err := e.Repo.ResolveCommit(ctx, "refs/heads/"+j.Target)
	if err != nil {
		return false
	}
	ok, err := e.Repo.IsAncestor(ctx, j.Merging, t)
	return err == nil && ok
}

// Advance enqueues the job that done job j advanced to (j.NextJob). It is
// idempotent — the next job's id is derived and created exclusively — so the
// reaper's repair and a re-run after a crash can never make a second one.
func (e *Env) Advance(ctx context.Context, j *gitstate.Job) (*gitstate.Job, error) {
	next, _, err := e.RepairAdvance(ctx, j)
	return next, err
}

// RepairAdvance is Advance that also reports whether this call created the
// next job (false: it existed already, made by a racing advancer).
func (e *Env) RepairAdvance(ctx context.Context, j *gitstate.Job) (next *gitstate.Job, created bool, err error) {
	if j.Status != gitstate.Done || j.NextJob == "" || j.SharedRun != "" {
		// A shared job advances on the remote (its settle), never here.
		return nil, false, nil
	}
	stage, ok := e.Config.Stage(j.Stage)
	if !ok || stage.Next == "" {
		return nil, false, fmt.Errorf("job %s: advance to %s: stage %q no longer has a next stage in orch.toml", j.ID, j.NextJob, j.Stage)
	}
	if want := gitstate.JobID(j.Task, stage.Next, j.Attempt); want != j.NextJob {
		return nil, false, fmt.Errorf("job %s: advance: next_job %s does not match stage %q of orch.toml (would be %s)", j.ID, j.NextJob, stage.Next, want)
	}
	next, created, err = e.Store.Create(&gitstate.Job{
		ID: j.NextJob, Task: j.Task, Stage: stage.Next, Branch: j.Branch, Target: j.Target,
		Attempt: j.Attempt, Status: gitstate.Queued, PrevCommit: JudgedCommit(j.Gates),
	})
	if errors.Is(err, gitstate.ErrCollected) {
		// The next job existed, ran and was collected by gc: the advance
		// happened long ago, and a job id runs at most once.
		return nil, false, e.Store.ClearAdvance(j.ID)
	}
	if err != nil {
		return nil, false, fmt.Errorf("job %s: advance to %s: %w", j.ID, j.NextJob, err)
	}
	return next, created, e.Store.ClearAdvance(j.ID)
}

// NeedsAdvance reports whether done job j names a next job that does not
// exist: its advancer died between the terminal claim and the enqueue. A
// next job gc collected (it has a tombstone) existed: no advance is due.
func (e *Env) NeedsAdvance(j *gitstate.Job) bool {
	if j.Status != gitstate.Done || j.NextJob == "" || j.SharedRun != "" {
		return false
	}
	_, err := e.Store.Get(j.NextJob)
	if !errors.Is(err, gitstate.ErrNotFound) {
		return false
	}
	// A failed lookup counts as due: gc keeps j, and the repair's Create
	// reports the error.
	collected, err := e.Store.Collected(j.NextJob)
	return err != nil || !collected
}

// needsWorktree reports whether any gate of the stage looks at the task's
// worktree, which costs a git process to find.
func needsWorktree(st config.Stage) bool {
	for _, g := range st.Gates {
		if g == config.GateCleanWorktree || strings.HasPrefix(g, config.GateCmdPrefix) {
			return true
		}
	}
	return false
}

// HasCommandGates reports whether finalizing j would run a cmd: gate.
func (e *Env) HasCommandGates(j *gitstate.Job) bool {
	st, ok := e.Config.Stage(j.Stage)
	if !ok || st.Kind == config.KindMerge {
		return false
	}
	for _, g := range st.Gates {
		if strings.HasPrefix(g, config.GateCmdPrefix) {
			return true
		}
	}
	return false
}

// JobVars are the ORCH_* variables a stage command, its finalize steps
// and its cmd: gates see. ORCH_REPO_ROOT is RepoRoot: the command runs in
// the task's worktree, which holds only what is committed on the branch,
// so a script kept beside orch.toml is run as "$ORCH_REPO_ROOT/agent.sh".
func (e *Env) JobVars(j *gitstate.Job, worktree string) map[string]string {
	return map[string]string{
		"ORCH_JOB_ID":    j.ID,
		"ORCH_TASK":      j.Task,
		"ORCH_STAGE":     j.Stage,
		"ORCH_BRANCH":    j.Branch,
		"ORCH_TARGET":    j.Target,
		"ORCH_ATTEMPT":   strconv.Itoa(j.Attempt),
		"ORCH_WORKTREE":  worktree,
		"ORCH_REPO_ROOT": e.RepoRoot(),
	}
}

// RepoRoot is the top of the main worktree, where orch.toml is; in a
// repository without one (bare), or whose main worktree git does not
// record, the directory of the orch.toml read.
func (e *Env) RepoRoot() string {
	if e.Repo.MainWorktree != "" {
		return e.Repo.MainWorktree
	}
	if e.Config.Path != "" {
		if abs, err := filepath.Abs(e.Config.Path); err == nil {
			return filepath.Dir(abs)
		}
	}
	return e.Repo.Worktree
}

// exitNotFound is the shell's exit status for a command it did not find
// (or could not run as a program: a script whose #! interpreter is missing).
const exitNotFound = 127

// notFoundHint says, for a command (a stage's run, a finalize step) that
// exited 127, what was not found, where it was looked for, and the fix.
// The usual cause: a script kept in the main worktree (beside orch.toml)
// but not committed, named relative to the directory, while the command
// runs in the task's worktree, which holds only what the branch commits.
func notFoundHint(command, worktree string, j *gitstate.Job) string {
	where := worktree
	if where == "" {
		where = "the task's worktree"
	}
	prog := command
	if f := strings.Fields(command); len(f) > 0 {
		prog = strings.Trim(f[0], `"'`)
	}
	msg := fmt.Sprintf("not found: sh -c %q ran in %s, the task's worktree, which holds only what is committed on %s", command, where, j.Branch)
	switch {
	case filepath.IsAbs(prog) || strings.HasPrefix(prog, "$"):
		return msg + fmt.Sprintf("; check that %s exists there and that the interpreter its #! line names is installed", prog)
	case strings.Contains(prog, "/"):
		rel := strings.TrimPrefix(prog, "./")
		return msg + fmt.Sprintf("; run the copy in the main worktree as \"$ORCH_REPO_ROOT/%s\" (ORCH_REPO_ROOT is set for every command), or commit %s on %s (the task's branch is made from %s)", rel, rel, j.Target, j.Target)
	default:
		return msg + fmt.Sprintf("; %s is not on PATH: install it, or name it by its path (\"$ORCH_REPO_ROOT/...\" for a script beside orch.toml)", prog)
	}
}

// stageOf returns the job's stage or a clear error.
func (e *Env) stageOf(j *gitstate.Job) (config.Stage, error) {
	s, ok := e.Config.Stage(j.Stage)
	if !ok {
		return s, fmt.Errorf("%w %q: job %s names a stage %s does not define (%s)", ErrUnknownStage, j.Stage, j.ID, e.configName(), stageList(e.Config))
	}
	return s, nil
}
