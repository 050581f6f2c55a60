package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

// ErrNotAdoptable is returned (wrapped) by Adopt when the job needs no
// adopter or another one won it: a definite "no", with nothing done.
var ErrNotAdoptable = fmt.Errorf("%w (%w)", gitstate.ErrNotAdoptable, ErrWrongStatus)

// MaxAdoptions bounds how many monitors may take over one job whose exit
// code is recorded (Job.Adoptions): an adopter that keeps dying in the
// finalize steps is not replaced forever, and the reaper's tier 2 ends the
// job instead.
const MaxAdoptions = 3

// AdoptionDue reports whether running job j needs a new monitor: its
// monitor is confirmed dead by identity, its command was stamped, and
// either
//   - no exit code is in the record, and its command still runs (its
//     process group is alive) or has ended with its exit status recorded by
//     the recorder (exitRecorder) — a job whose command is gone with no
//     recorded status is not: that one is lost (the reaper's tier 1); or
//   - exit code 0 is in the record and the stage has finalize steps: the
//     monitor died in them, and the steps not yet run are still owed
//     (resumeFinalize). That holds only while the job has had fewer than
//     MaxAdoptions adopters; past that, and for a failed command or a
//     stage without steps (where an adopter would add nothing), the
//     reaper's tier 2 finalizes it. Callers also leave such a job to
//     tier 2 once its last progress stamp is older than finalize_grace_s
//     (GraceOver), each on its own clock.
//
// groups answers process-group liveness (procid.GroupLiveness, or a pass's
// procid.GroupTable). why says what was seen, for a person.
func (e *Env) AdoptionDue(j *gitstate.Job, groups func(procid.Identity) (procid.Liveness, error)) (due bool, why string, err error) {
	if j.Status != gitstate.Running || j.Command.IsZero() {
		// Without a stamped command the recorder's gate never opened:
		// the command never ran.
		return false, "", nil
	}
	if l, err := procid.Check(j.Monitor); err != nil || l != procid.Dead {
		return false, "", err
	}
	if j.ExitCode != nil {
		return e.resumeDue(j)
	}
	l, err := groups(j.Command)
	if err != nil {
		return false, "", err
	}
	switch l {
	case procid.Alive:
		return true, "monitor dead, command alive", nil
	case procid.Dead:
		_, ok, err := e.Store.RecordedExit(j.ID)
		if err != nil || !ok {
			return false, "", err
		}
		return true, "monitor dead, command ended with its exit status recorded", nil
	}
	return false, "", nil
}

// resumeDue is AdoptionDue for job j, whose monitor is dead with an exit
// code in the record. j may be a pass's summary of the record: the record
// itself is read (a dead monitor is rare; its full record is worth it).
func (e *Env) resumeDue(j *gitstate.Job) (bool, string, error) {
	cur, err := e.Store.Get(j.ID)
	if err != nil {
		return false, "", err
	}
	if cur.Status != gitstate.Running || cur.Monitor != j.Monitor || cur.ExitCode == nil || *cur.ExitCode != 0 {
		return false, "", nil
	}
	stage, ok := e.Config.Stage(cur.Stage)
	if !ok || stage.Kind == config.KindMerge || len(stage.Finalize) == 0 || cur.Adoptions >= MaxAdoptions {
		return false, "", nil
	}
	return true, fmt.Sprintf("monitor dead in its finalize steps (exit code 0 recorded, %d of %d started)", cur.FinalizeStep, len(stage.Finalize)), nil
}

// GraceOver reports whether running job j has an exit code recorded and a
// last progress stamp older than finalize_grace_s: the reaper's tier 2 is
// then due, and no adopter is started for it (an adopter that never wins
// the job never stamps, so this bounds them all).
func (e *Env) GraceOver(j *gitstate.Job) bool {
	age, ok := progressAge(j)
	return j.ExitCode != nil && ok && age >= e.Config.Reaper.FinalizeGrace()
}

// progressAge is the age of j's last progress stamp: on the boot clock when
// it was stamped on this boot and in a comparable time namespace, else on
// the wall clock. ok is false when there is no stamp, or it lies in the
// future (the clock moved: not old, never "wait until then").
func progressAge(j *gitstate.Job) (time.Duration, bool) {
	if now, ok := gitstate.BootTime(); ok && j.ProgressBoot > 0 && procid.Local(j.Monitor) && now >= j.ProgressBoot {
		return now - j.ProgressBoot, true
	}
	if j.ProgressAt.IsZero() {
		return 0, false
	}
	age := time.Since(j.ProgressAt)
	return age, age >= 0
}

// Adopt makes the calling process the monitor of running job id, whose
// monitor died while its outcome could still be had (AdoptionDue): it
// takes the job over by compare-and-swap on the monitor's identity
// (gitstate.Store.Adopt: of any number of racing adopters one wins; a
// loser returns an error wrapping ErrNotAdoptable having done nothing) and
// goes on as the monitor would have.
//
// With no exit code in the record, it waits for the command by identity
// (it is not its parent), reads the exit status the recorder wrote, and
// records it first, then runs the finalize steps (none had run: they start
// only after the exit code is in the record) and Finalize. A command gone
// with no recorded status (its process group was killed) ends the job
// failed (lost).
//
// With exit code 0 in the record, the monitor died in its finalize steps:
// the adopter settles the last step stamped started (settleStep: waits it
// out by identity, and takes its outcome from its recorder), runs the
// steps after it — each exactly once, fenced as the monitor's — and
// finalizes.
func (e *Env) Adopt(ctx context.Context, id string) (Result, error) {
	ctx = context.WithoutCancel(ctx)
	self, err := procid.Self()
	if err != nil {
		return Result{}, err
	}
	j, err := e.Store.Get(id)
	if err != nil {
		return Result{}, err
	}
	due, _, err := e.AdoptionDue(j, procid.GroupLiveness)
	if err != nil {
		return Result{Job: j}, fmt.Errorf("adopt job %s: %w", id, err)
	}
	if !due {
		return Result{Job: j}, fmt.Errorf("job %s needs no adopter (status %s, monitor %s): %w", id, j.Status, j.Monitor, ErrNotAdoptable)
	}
	// As the dead monitor left it (it can write nothing more: every
	// monitor write checks, under the job's lock, that it is still the
	// job's monitor). The adoption's write restamps progress, and a
	// running step's deadline is measured from its own stamp.
	before := j
	old := j.Monitor
	j, err = e.Store.Adopt(ctx, id, old, self)
	if errors.Is(err, gitstate.ErrNotAdoptable) {
		return Result{Job: j}, fmt.Errorf("%v: %w", err, ErrNotAdoptable)
	}
	if err != nil {
		return Result{Job: j}, err
	}
	crashpoint.Hit("adopt.claimed")
	logf, err := e.Store.OpenLog(id)
	if err != nil {
		return e.Finalize(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: fmt.Sprintf("adopted, but open log: %v", err)})
	}
	defer logf.Close()
	say := func(format string, args ...any) {
		fmt.Fprintf(logf, "== orch-hooks %s: "+format+"\n", append([]any{time.Now().UTC().Format(time.RFC3339)}, args...)...)
	}
	logCap := startLogCap(logf, e.Config.Logs.MaxBytes, say)
	defer logCap.Stop()
	// A shared job: the adopter takes the run's claim from the remote
	// (running, with this job's run id) and beats it as the monitor did;
	// a job the remote no longer gives this run is ended here and its
	// processes stopped.
	var sr *sharedRunner
	if j.SharedRun != "" {
		sr, err = e.startShared(ctx, j, e.onLost(ctx, id))
		if err != nil {
			return e.loseShared(ctx, id, sharedFailure(err), say)
		}
		defer sr.close()
	}
	if j.ExitCode != nil {
		return e.resumeFinalize(ctx, before, j, self, logf, logCap, sr, say)
	}
	say("adopted job %s (pid %d): its monitor (pid %d) died while its command (pid %d) lived; waiting for the command", id, self.PID, old.PID, j.Command.PID)

	waitGone(j.Command, time.Time{})
	crashpoint.Hit("adopt.command_ended")
	if left, _ := procid.SignalGroup(j.Command, syscall.SIGTERM); left {
		say("stopped what the command left running in its process group")
	}
	code, ok, err := e.Store.RecordedExit(id)
	if err != nil || !ok {
		why := "its process group was killed before its exit status was recorded"
		if err != nil {
			why = err.Error()
		}
		say("command ended with no exit status: %s", why)
		return e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: LostReason}, logCap, say)
	}
	say("command ended: exit code %d (recorded by its exit-status recorder)", code)
	stage, err := e.stageOf(j)
	if err != nil {
		return e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: err.Error()}, logCap, say)
	}
	wt, err := e.FindWorktree(ctx, j)
	if err != nil && code == 0 && len(stage.Finalize) > 0 {
		return e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: fmt.Sprintf("adopted: find the task's worktree for the finalize steps: %v", err)}, logCap, say)
	}
	return e.afterCommand(ctx, monitored{id: id, self: self, job: j, worktree: wt, stage: stage, log: logf, logCap: logCap, say: say, shared: sr}, code)
}

// resumeFinalize is Adopt for job j (before: as its dead monitor left it),
// whose exit code 0 is in the record: its monitor died in the finalize
// steps. Step k, the last stamped started (before.FinalizeStep; 0: none),
// is settled first (settleStep); a step that failed, timed out or has no
// recorded outcome fails the job naming it, and no step is run twice.
// Then steps k+1.. run, fenced, and the job is finalized.
func (e *Env) resumeFinalize(ctx context.Context, before, j *gitstate.Job, self procid.Identity, logf *os.File, logCap *logCap, sr *sharedRunner, say func(string, ...any)) (Result, error) {
	id := j.ID
	fail := func(reason string) (Result, error) {
		say("%s", reason)
		res, err := e.finalizeOnSpace(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: reason}, logCap, say)
		if res.Job != nil && res.Job.Status.Terminal() {
			e.Store.RemoveStepExits(id)
		}
		return res, err
	}
	stage, err := e.stageOf(j)
	if err != nil {
		return fail(err.Error())
	}
	k, n := before.FinalizeStep, len(stage.Finalize)
	say("adopted job %s (pid %d): its monitor (pid %d) died in its finalize steps (exit code %d recorded, step %d of %d started)",
		id, self.PID, before.Monitor.PID, *j.ExitCode, k, n)
	if k > n {
		return fail(fmt.Sprintf("adopted: the record says finalize step %d started, but stage %s has %d in orch.toml now; steps are not run against a changed list", k, stage.Name, n))
	}
	wt, err := e.FindWorktree(ctx, j)
	if err != nil && k < n {
		return fail(fmt.Sprintf("adopted: find the task's worktree for the finalize steps: %v", err))
	}
	if k > 0 {
		if reason := e.settleStep(before, stage, k, say); reason != "" {
			return fail(reason)
		}
	}
	return e.finalizeFrom(ctx, monitored{id: id, self: self, job: j, worktree: wt, stage: stage, log: logf, logCap: logCap, say: say, shared: sr}, k+1)
}

// settleStep decides the outcome of finalize step k of job j, which its
// monitor stamped started before it died (j as the monitor left it), and
// returns a failure reason, or "" when the step succeeded. The step is
// never run again — each step runs at most once:
//   - still running (its process, the step's recorder, alive by identity):
//     waited for, up to the stage's finalize_timeout_s from the record's
//     last progress stamp (the step's start, or a later adoption's); past
//     it, its process group is stopped (TERM, KILL after a grace, by
//     identity) and the step has timed out;
//   - ended: what its recorder wrote (Store.RecordedStepExit) is its
//     outcome, as the monitor would have had it from its wait;
//   - ended with nothing recorded (its process group was killed, or the
//     monitor died in the instant between the stamp and opening the
//     step's gate, so it never ran): its outcome is unknown, and the job
//     fails saying so — a half-done `git push` is not the adopter's to
//     repeat.
func (e *Env) settleStep(j *gitstate.Job, stage config.Stage, k int, say func(string, ...any)) string {
	step, timeout := stage.Finalize[k-1], stage.FinalizeTimeout()
	if l, _ := procid.Check(j.Finalizer); !j.Finalizer.IsZero() && l == procid.Alive {
		left := timeout
		if age, ok := progressAge(j); ok {
			left -= age
		}
		say("finalize step %d (%s) still runs (pid %d): waiting for it, %s at most", k, step, j.Finalizer.PID, max(left, 0).Round(time.Second))
		if !waitGone(j.Finalizer, time.Now().Add(left)) {
			say("finalize step %d (%s) passed its timeout: stopping its process group", k, step)
			if err := stopJudgeable([]procid.Identity{j.Finalizer}, killGrace); err != nil {
				say("stop finalize step %d: %v", k, err)
			}
			return fmt.Sprintf("finalize step %q timed out after %s", step, timeout)
		}
	}
	crashpoint.Hit("adopt.step_settled")
	if !j.Finalizer.IsZero() {
		// Leftovers end with the step, as under its monitor.
		procid.SignalGroup(j.Finalizer, syscall.SIGTERM)
	}
	code, ok, err := e.Store.RecordedStepExit(j.ID, k)
	switch {
	case err != nil:
		return fmt.Sprintf("finalize step %q: %v", step, err)
	case !ok:
		return fmt.Sprintf("finalize step %d %q: its monitor died while it ran and its outcome was not recorded; a step runs at most once, so it was not run again", k, step)
	case code == exitNotFound:
		return fmt.Sprintf("finalize step %q failed: exit code 127: %s", step, notFoundHint(step, "", j))
	case code != 0:
		return fmt.Sprintf("finalize step %q failed: exit code %d", step, code)
	}
	say("finalize step %d (%s) had ended: exit code 0 (recorded by its exit-status recorder)", k, step)
	return ""
}

// LostReason is the reason of a job whose command ended with no exit
// status recorded (the reaper's tier 1 uses the same word).
const LostReason = "lost"

// waitGone returns true once the process id is no longer alive (dead by
// identity, or no longer judgeable), false if deadline (zero: none) comes
// first. The caller is not its parent: it waits on a pidfd where the
// kernel has them (Linux 5.3+: woken at the exit), else polls with a
// backoff up to 250 ms.
func waitGone(id procid.Identity, deadline time.Time) bool {
	fd, err := pidfdOpen(id.PID)
	pidfd := err == nil
	if pidfd {
		defer unix.Close(fd)
	}
	backoff := 5 * time.Millisecond
	for {
		// Checked after the pidfd is open: if the process is ours still,
		// the pidfd names it and no reuse of the pid can fool the wait.
		if l, _ := procid.Check(id); l != procid.Alive {
			return true
		}
		wait := time.Second
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return false
			}
			wait = min(wait, left)
		}
		if pidfd {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, perr := unix.Poll(fds, int(wait.Milliseconds())+1); perr == nil || perr == unix.EINTR {
				continue
			}
		}
		time.Sleep(min(backoff, wait))
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// StartAdopter returns a MonitorStarter that runs `exe [args...] run
// --adopt JOB` detached, as StartMonitor does a monitor (its own session,
// output to the job's log), without waiting for it: whether it wins the
// job is decided by the compare-and-swap, and a loser exits having done
// nothing, so a duplicate start is harmless. args as for StartMonitor
// (MonitorArgs).
func (e *Env) StartAdopter(exe string, args ...string) MonitorStarter {
	return func(ctx context.Context, id string) error {
		logf, err := e.Store.OpenLog(id)
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd := exec.Command(exe, append(append([]string(nil), args...), "run", "--adopt", id)...)
		cmd.Dir = e.MonitorDir()
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start adopter: %w", err)
		}
		// Reap it when it ends, for callers that live on (watch).
		go cmd.Wait()
		return nil
	}
}

// adoptOrphans starts an adopter (e.Adopter) for every running job in jobs
// that needs one (AdoptionDue), and returns those it started one for.
func (e *Env) adoptOrphans(ctx context.Context, jobs []*gitstate.Job) (started []Adoption, errs []error) {
	if e.Adopter == nil {
		return nil, nil
	}
	for _, j := range jobs {
		if j.Status != gitstate.Running || !procid.Local(j.Monitor) || e.GraceOver(j) {
			continue
		}
		due, why, err := e.AdoptionDue(j, procid.GroupLiveness)
		if err != nil {
			errs = append(errs, fmt.Errorf("job %s: %w", j.ID, err))
			continue
		}
		if !due {
			continue
		}
		if err := e.Adopter(ctx, j.ID); err != nil {
			errs = append(errs, fmt.Errorf("adopt %s: %w", j.ID, err))
			continue
		}
		started = append(started, Adoption{Job: j.ID, Why: why})
	}
	return started, errs
}
