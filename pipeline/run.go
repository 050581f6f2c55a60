package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

// ErrWrongStatus is wrapped by every refusal that comes from a job's status
// (running what is not queued, retrying what did not fail, cancelling what
// has ended): a definite "no", not a malfunction.
var ErrWrongStatus = errors.New("wrong status")

// ErrNotQueued is returned (wrapped) by Run for a job another process has
// already claimed, or that has ended.
var ErrNotQueued = fmt.Errorf("job is not queued (%w)", ErrWrongStatus)

// RunOptions tune Run.
type RunOptions struct {
	// Claimed, if set, is called once the claim queued → running has been
	// decided: with nil after winning it, with the error otherwise. Dispatch
	// uses it to count the job as running before starting another.
	Claimed func(error)
	// Log receives the monitor's own messages (the job's log by default).
	Log io.Writer
}

// Run runs job id in the calling process, which becomes its monitor:
//
//  1. claim queued → running, writing this process's identity in the same
//     write;
//  2. prepare the task's worktree and start the stage command with sh -c in
//     its own process group, output appended to the job's log; stamp the
//     command's identity and process group at once;
//  3. when the command exits, record exit_code and finished_at first (only
//     while the job is still running);
//  4. run the stage's finalize steps, each with its timeout;
//  5. Finalize: gates, claim the terminal status, advance if won.
//
// A crash at any point leaves a record the reaper can judge. SIGINT or
// SIGTERM to the monitor is passed on to the command's process group as
// TERM; the job then ends with the command's exit status.
func (e *Env) Run(ctx context.Context, id string, opts RunOptions) (Result, error) {
	// Once claimed, the job is seen through to a recorded end even if the
	// caller is interrupted.
	ctx = context.WithoutCancel(ctx)
	claimed := opts.Claimed
	if claimed == nil {
		claimed = func(error) {}
	}
	self, err := procid.Self()
	if err != nil {
		claimed(err)
		return Result{}, err
	}
	// A merge stage's commit identity is fixed by the claim (with the start
	// time as its date), so a merge rebuilt after a crash is the same commit.
	var author gitstate.Signature
	if cur, err := e.Store.Get(id); err == nil {
		if st, ok := e.Config.Stage(cur.Stage); ok && st.Kind == config.KindMerge {
			author.Name, author.Email = merge.Identity(ctx, e.Repo)
		}
	}
	j, won, err := e.Store.Claim(ctx, id, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started by monitor", func(j *gitstate.Job) {
		j.Monitor = self
		j.MergeAuthor = author
		j.StartedBoot, _ = gitstate.BootTime()
	})
	if err == nil && !won {
		hint := e.NewAttemptHint(j)
		if hint != "" {
			hint = " (" + hint + ")"
		}
		err = fmt.Errorf("job %s is %s: %w; only a queued job can be run%s", id, j.Status, ErrNotQueued, hint)
	}
	claimed(err)
	if err != nil {
		return Result{Job: j}, err
	}
	crashpoint.Hit("run.claimed")

	logf, err := e.Store.OpenLog(id)
	if err != nil {
		return e.Finalize(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: fmt.Sprintf("open log: %v", err)})
	}
	defer logf.Close()
	mlog := opts.Log
	if mlog == nil {
		mlog = logf
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(mlog, "== orch-hooks %s: "+format+"\n", append([]any{time.Now().UTC().Format(time.RFC3339)}, args...)...)
	}
	// The command writes the log itself (O_APPEND); the cap is kept from
	// the side, so a monitor that dies never breaks the command's output.
	logCap := startLogCap(logf, e.Config.Logs.MaxBytes, func(format string, args ...any) {
		fmt.Fprintf(logf, "== orch-hooks %s: "+format+"\n", append([]any{time.Now().UTC().Format(time.RFC3339)}, args...)...)
	})
	defer logCap.Stop()
	fail := func(reason string) (Result, error) {
		say("%s", reason)
		return e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: reason}, logCap, say)
	}

	stage, err := e.stageOf(j)
	if err != nil {
		return fail(err.Error())
	}
	// A shared job (remote mode) beats its record on the remote from now
	// on, and is stopped here the moment a beat finds it lost.
	var sr *sharedRunner
	if j.SharedRun != "" {
		sr, err = e.startShared(ctx, j, e.onLost(ctx, id))
		if err != nil {
			return fail(sharedFailure(err))
		}
		defer sr.close()
	}
	if stage.Kind == config.KindMerge {
		return e.runMerge(ctx, j, self, stage, sr, say)
	}
	// From here until the command has started, gc cannot remove the
	// task's worktree; after it, the job is running and gc sees it.
	unlockTask, err := e.lockTask(ctx, j.Task)
	if err != nil {
		return fail(err.Error())
	}
	wt, err := e.EnsureWorktree(ctx, j)
	if err != nil {
		unlockTask()
		return fail(err.Error())
	}
	say("job %s stage %s attempt %d in %s: %s", j.ID, j.Stage, j.Attempt, wt, stage.Run)
	if sr != nil {
		if err := sr.fence(ctx, "command", "the start of the command"); err != nil {
			unlockTask()
			return fail(sharedFailure(err))
		}
	}

	// The command must not die with the monitor's context: a monitor that is
	// told to stop passes TERM on and keeps watching. Its direct child is
	// the exit-status recorder (exitRecorder), held at a gate until the
	// command's identity is in the record.
	if err := e.Store.PrepareExit(id); err != nil {
		unlockTask()
		return fail(err.Error())
	}
	cmd := shellCmd(context.Background(), wt, stage.Run, mergeEnv(os.Environ(), e.JobVars(j, wt)), logf)
	gate, open, err := os.Pipe()
	if err != nil {
		unlockTask()
		return fail(fmt.Sprintf("start %q: %v", stage.Run, err))
	}
	defer open.Close()
	cmd.Args = []string{"sh", "-c", exitRecorder, "orch-run", e.Store.ExitPath(id), stage.Run}
	cmd.Stdin = gate
	err = cmd.Start()
	gate.Close() // the recorder's copy is the only one left
	unlockTask()
	if err != nil {
		return fail(fmt.Sprintf("start %q: %v", stage.Run, err))
	}
	stopForwarding := forwardSignals(cmd.Process.Pid)
	defer stopForwarding()
	// The child cannot be reaped before Wait, so its /proc entry is there
	// even if it has exited already. The gate opens under the job's lock
	// once the stamp has landed: a monitor killed before that leaves it
	// shut, and the command never runs unnamed by its record.
	cmdID, err := procid.Of(cmd.Process.Pid)
	if err == nil {
		_, err = e.whileRunningErr(ctx, id, self, func(j *gitstate.Job) error {
			j.Command, j.PGID = cmdID, cmd.Process.Pid
			return nil
		}, func(*gitstate.Job) {
			io.WriteString(open, "go\n")
			open.Close()
		})
	}
	if err != nil {
		// Cancelled between the claim and now, or the record is gone: the
		// command must not outlive its job (the gate never opened).
		open.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		say("command stopped: %v", err)
		return Result{Job: j}, err
	}
	crashpoint.Hit("run.stamped")

	code, detail := recordedStatus(cmd.Wait())
	say("command ended: %s", detail)
	// What the command left running in its process group (a `sleep &`)
	// ends with it: a job's processes are over when its command is.
	if left, _ := procid.SignalGroup(cmdID, syscall.SIGTERM); left {
		say("stopped what the command left running in its process group")
	}
	return e.afterCommand(ctx, monitored{id: id, self: self, job: j, worktree: wt, stage: stage, log: logf, logCap: logCap, say: say, shared: sr}, code)
}

// onLost is what a shared job's monitor does when a beat finds the job
// lost (cancelled or expired on the remote, or taken by another run): the
// local job is claimed failed and its processes are stopped. It writes to
// the job's log itself: it runs beside the monitor's own writes.
func (e *Env) onLost(ctx context.Context, id string) func(error) {
	return func(err error) {
		say := func(format string, args ...any) { e.logLine(id, fmt.Sprintf(format, args...)) }
		e.loseShared(ctx, id, sharedFailure(err), say)
	}
}

// sharedFailure is the local reason of a shared job that could not go on
// for err (lost, or the remote unreachable for the TTL).
func sharedFailure(err error) string {
	if errors.Is(err, remotejob.ErrLost) {
		return "lost the shared job: " + err.Error()
	}
	return err.Error()
}

// monitored is what a monitor (Run, or an adopter: Adopt) knows of the job
// it watches once the command is running.
type monitored struct {
	id       string
	self     procid.Identity
	job      *gitstate.Job
	worktree string
	stage    config.Stage
	log      *os.File
	logCap   *logCap
	say      func(string, ...any)
	// shared beats a shared job's record (nil for a local job).
	shared *sharedRunner
}

// afterCommand is steps 3 to 5 of Run, for a command that exited with code:
// record the exit code and finished_at first (only while the job is still
// running under m.self), run the finalize steps, finalize. Run and an
// adopter share it, so an adopted job ends exactly as one whose monitor
// lived.
func (e *Env) afterCommand(ctx context.Context, m monitored, code int) (Result, error) {
	id, self, stage, logCap, say := m.id, m.self, m.stage, m.logCap, m.say
	// The command may have written all its output between two looks.
	logCap.Enforce()
	if m.shared != nil {
		m.shared.setProgress(fmt.Sprintf("exit %d", code))
	}
	now := time.Now().UTC()
	boot, _ := gitstate.BootTime()
	// A full disk is waited out (the log's space given up first): the
	// outcome is what the job is for.
	for n := 0; ; n++ {
		_, err := e.whileRunning(ctx, id, self, "", func(j *gitstate.Job) {
			j.ExitCode, j.FinishedAt = &code, now
			j.ProgressAt, j.ProgressBoot = now, boot // the first progress stamp
		})
		if err == nil {
			break
		}
		if isNoSpace(err) {
			e.waitForSpace(fmt.Sprintf("exit code %d of job %s not recorded", code, id), n, err, logCap, say)
			continue
		}
		say("exit code not recorded: %v", err)
		return e.Finalize(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor})
	}
	// The record holds it now; the recorder's copy has served.
	e.Store.RemoveExit(id)
	crashpoint.Hit("run.exit_recorded")

	if code != 0 {
		return e.finalizeFrom(ctx, m, len(stage.Finalize)+1)
	}
	return e.finalizeFrom(ctx, m, 1)
}

// finalizeFrom is steps 4 and 5 of Run for a job whose exit code 0 is in
// the record, from finalize step `from` (from 1; past the last, none): it
// runs the steps not yet run, each fenced (finalizeStep), and finalizes.
// Run starts at step 1; an adopter of a job whose monitor died in its
// finalize steps starts after the last one stamped started (settleStep
// decides that one's outcome), so each step runs at most once.
func (e *Env) finalizeFrom(ctx context.Context, m monitored, from int) (Result, error) {
	id, self, j, wt, stage, logf, logCap, say := m.id, m.self, m.job, m.worktree, m.stage, m.log, m.logCap, m.say
	if len(stage.Finalize) > 0 {
		// Once the job has ended its record is the truth: the steps'
		// exit files, kept for an adopter until now, have served.
		defer func() {
			if cur, err := e.Store.Get(id); err == nil && cur.Status.Terminal() {
				e.Store.RemoveStepExits(id)
			}
		}()
	}
	fail := func(reason string) (Result, error) {
		say("%s", reason)
		return e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: reason}, logCap, say)
	}
	for i := from - 1; i >= 0 && i < len(stage.Finalize); i++ {
		step := stage.Finalize[i]
		if m.shared != nil {
			// Fenced on the remote too: no step runs for a shared job
			// another machine may have expired or that was cancelled.
			what := fmt.Sprintf("finalize step %d", i+1)
			if err := m.shared.fence(ctx, fmt.Sprintf("finalize %d/%d", i+1, len(stage.Finalize)), what); err != nil {
				return fail(sharedFailure(err))
			}
		}
		reason, err := e.finalizeStep(ctx, id, self, j, wt, i+1, step, stage.FinalizeTimeout(), logf, say)
		if err != nil && !errors.Is(err, errNotOurs) {
			// The store failed (a lock deadline, a full disk): the
			// step did not run, and the job fails saying so.
			return fail(fmt.Sprintf("finalize step %q not started: %v", step, err))
		}
		if err != nil {
			// Lost: the job was ended (cancel, the reaper) or taken
			// over while this monitor worked. It runs nothing more.
			say("finalize step %d not started: %v", i+1, err)
			if cur, gerr := e.Store.Get(id); gerr == nil {
				j = cur
			}
			return Result{Job: j}, err
		}
		if reason != "" {
			return fail(reason)
		}
		crashpoint.Hit(fmt.Sprintf("run.finalize_step.%d", i))
	}
	res, err := e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor}, logCap, say)
	if err == nil {
		say("job %s: %s (%s)", id, res.Job.Status, res.Job.Reason)
		if res.Next != nil {
			say("advanced to %s", res.Next.ID)
		}
	}
	return res, err
}

// waitForSpace handles retry n (from 0) of a record write that failed for
// want of space (err names the file system and the fix): the log is shed
// down to its first 64 KiB, the monitor says so on its stderr and in the
// log, and waits before the retry.
func (e *Env) waitForSpace(what string, n int, err error, lc *logCap, say func(string, ...any)) {
	freed := lc.Shed()
	msg := fmt.Sprintf("%s: %v (this monitor does that itself: it retries, every %s at most, until the write succeeds)", what, err, noSpaceBackoff(1<<10))
	if freed > 0 {
		msg += fmt.Sprintf("; it freed %d bytes of the job's log, keeping its first %d KiB", freed, logKeepOnFull>>10)
	}
	if n == 0 || n%30 == 0 || freed > 0 {
		fmt.Fprintf(os.Stderr, "orch-hooks: %s\n", msg)
		say("%s", msg)
	}
	time.Sleep(noSpaceBackoff(n))
}

// finalizeOnSpace is Finalize, waiting out a full disk: the terminal
// record has priority over the log. A retry after a claim that landed
// finds the job ended and does nothing.
func (e *Env) finalizeOnSpace(ctx context.Context, id string, end Ending, lc *logCap, say func(string, ...any)) (Result, error) {
	for n := 0; ; n++ {
		res, err := e.Finalize(ctx, id, end)
		if !isNoSpace(err) {
			return res, err
		}
		e.waitForSpace(fmt.Sprintf("the end of job %s not recorded", id), n, err, lc, say)
	}
}

// exitRecorder is the stage command's direct parent (and a finalize
// step's: then the file is Store.StepExitPath, and "the command" below is
// the step), the leader of its process group: it waits for the monitor's
// "go" on its stdin (end of input: the monitor died before the command's
// identity was stamped, and the command never runs), runs the command ($2) as `sh -c "$2"` — so the
// command's $0, $$, arguments and environment are what a plain `sh -c`
// gives it — and writes its exit status, "N\n", to the exit file ($1),
// created exclusively (set -C: never through a symlink or over a file left
// there), before exiting with the same status. It lives in the command's
// process group, so a SIGKILL of the monitor leaves it recording, and it
// dies with the group when the group is killed (cancel, tier 3): then no
// status is written, and none is owed. TERM, INT and HUP (the monitor
// forwards TERM to the group) are trapped so the recorder outlives them
// and records what the command made of them; a trap set to a command is
// reset in the child, so the command gets the default dispositions, as
// before. A command killed by signal N is recorded as 128+N, as the
// monitor records it.
const exitRecorder = `IFS= read -r go || exit 125
trap : HUP INT TERM
sh -c "$2" </dev/null
c=$?
set -C
printf '%s\n' "$c" >"$1"
exit "$c"`

// finalizeStep runs finalize step k (from 1) and returns a failure reason,
// or "". The step is fenced: under the job's lock, the record is checked to
// be still running under this monitor, the step's process — its exit-status
// recorder (exitRecorder, writing Store.StepExitPath), which runs the step —
// is started held at a gate, "step k started" — its number, its process and
// the progress stamp — is written, and only then is the gate opened, all
// before the lock is let go. So a step never runs for a job that was ended
// or taken over, never runs unless the record names it (a monitor killed
// before the write leaves the gate shut), and whoever ends the job later
// finds the step's process group in the record and can stop it; the
// recorder's file is how an adopter learns the step's outcome when this
// monitor dies while it runs (settleStep). err (wrapping errNotOurs,
// or the store's failure) means the step did not run: the monitor lost its
// job and must do nothing more.
func (e *Env) finalizeStep(ctx context.Context, id string, self procid.Identity, j *gitstate.Job, wt string, k int, step string,
	timeout time.Duration, log io.Writer, say func(string, ...any)) (reason string, err error) {
	say("finalize: %s", step)
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := shellCmd(sctx, wt, step, mergeEnv(os.Environ(), e.JobVars(j, wt)), log)
	gate, open, perr := os.Pipe()
	if perr != nil {
		return fmt.Sprintf("finalize step %q: %v", step, perr), nil
	}
	defer gate.Close()
	defer open.Close()
	// A leftover (or planted) file would stop the recorder's exclusive
	// create; a job's step k runs at most once, so none is owed.
	if err := os.Remove(e.Store.StepExitPath(id, k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("finalize step %q: %v", step, err), nil
	}
	cmd.Args = []string{"sh", "-c", exitRecorder, "orch-finalize", e.Store.StepExitPath(id, k), step}
	cmd.Stdin = gate
	var startErr error
	var fid procid.Identity
	_, err = e.whileRunningErr(ctx, id, self, func(r *gitstate.Job) error {
		if startErr = cmd.Start(); startErr != nil {
			return startErr
		}
		gate.Close() // the step's copy is the only one left
		crashpoint.Hit("run.finalize_spawned")
		// The child cannot be reaped before Wait: its /proc entry is
		// there. Without an identity the group is unnamed, as before.
		fid, _ = procid.Of(cmd.Process.Pid)
		now := time.Now().UTC()
		boot, _ := gitstate.BootTime()
		r.FinalizeStep, r.Finalizer = k, fid
		r.ProgressAt, r.ProgressBoot = now, boot
		return nil
	}, func(*gitstate.Job) {
		io.WriteString(open, "go\n")
		open.Close()
	})
	switch {
	case startErr != nil:
		return fmt.Sprintf("finalize step %q: %v", step, startErr), nil
	case err != nil && cmd.Process != nil:
		// Started, but the stamp was not written (the store failed): the
		// gate stays shut, so the step never ran.
		open.Close()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		return "", fmt.Errorf("finalize step %d %q stopped: %w", k, step, err)
	case err != nil:
		return "", err
	}
	crashpoint.Hit("run.finalize_started")
	code, detail, _ := exitStatus(cmd.Wait())
	if !fid.IsZero() {
		procid.SignalGroup(fid, syscall.SIGTERM) // leftovers end with the step
	}
	switch {
	case sctx.Err() == context.DeadlineExceeded:
		return fmt.Sprintf("finalize step %q timed out after %s", step, timeout), nil
	case code == exitNotFound:
		return fmt.Sprintf("finalize step %q failed: exit code 127: %s", step, notFoundHint(step, wt, j)), nil
	case code != 0:
		return fmt.Sprintf("finalize step %q failed: %s", step, detail), nil
	}
	return "", nil
}

// errNotOurs is why a monitor's guarded write was declined: the job was
// ended by someone else (cancel, the reaper) while the monitor worked.
var errNotOurs = fmt.Errorf("job is no longer running under this monitor (%w)", ErrWrongStatus)

// whileRunning applies fn to the record only while the job is still running
// under this monitor: a cancelled, reaped or re-claimed job is never
// written by a monitor that lost it.
func (e *Env) whileRunning(ctx context.Context, id string, self procid.Identity, reason string, fn func(*gitstate.Job)) (*gitstate.Job, error) {
	j, err := e.Store.Update(ctx, id, reason, func(j *gitstate.Job) error {
		if j.Status != gitstate.Running || j.Monitor != self {
			return gitstate.ErrSkip
		}
		fn(j)
		return nil
	})
	if errors.Is(err, gitstate.ErrSkip) {
		return j, fmt.Errorf("job %s is %s: %w", id, j.Status, errNotOurs)
	}
	return j, err
}

// whileRunningErr is whileRunning for a write that carries a side effect:
// fn runs under the job's lock only after the check, and an error from fn
// declines the write and is returned as it is; after runs once the write
// has landed, still under the lock (gitstate.Store.Update).
func (e *Env) whileRunningErr(ctx context.Context, id string, self procid.Identity, fn func(*gitstate.Job) error, after ...func(*gitstate.Job)) (*gitstate.Job, error) {
	j, err := e.Store.Update(ctx, id, "", func(j *gitstate.Job) error {
		if j.Status != gitstate.Running || j.Monitor != self {
			return gitstate.ErrSkip
		}
		return fn(j)
	}, after...)
	if errors.Is(err, gitstate.ErrSkip) {
		return j, fmt.Errorf("job %s is %s: %w", id, j.Status, errNotOurs)
	}
	return j, err
}

// forwardSignals passes SIGINT and SIGTERM received by the monitor on to the
// command's process group as SIGTERM.
func forwardSignals(pgid int) (stop func()) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				syscall.Kill(-pgid, syscall.SIGTERM)
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
