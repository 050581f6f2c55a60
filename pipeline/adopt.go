package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

// ErrNotAdoptable is returned (wrapped) by Adopt when the job needs no
// adopter or another one won it: a definite "no", with nothing done.
var ErrNotAdoptable = fmt.Errorf("%w (%w)", gitstate.ErrNotAdoptable, ErrWrongStatus)

// AdoptionDue reports whether running job j needs a new monitor: its
// monitor is confirmed dead by identity, no exit code is in the record,
// and its command either still runs (its process group is alive) or has
// ended with its exit status recorded by the recorder (exitRecorder). A
// job whose command is gone with no recorded status is not: that one is
// lost (the reaper's tier 1). groups answers process-group liveness
// (procid.GroupLiveness, or a pass's procid.GroupTable). why says what was
// seen, for a person.
func (e *Env) AdoptionDue(j *gitstate.Job, groups func(procid.Identity) (procid.Liveness, error)) (due bool, why string, err error) {
	if j.Status != gitstate.Running || j.ExitCode != nil || j.Command.IsZero() {
		// Without a stamped command the recorder's gate never opened:
		// the command never ran.
		return false, "", nil
	}
	if l, err := procid.Check(j.Monitor); err != nil || l != procid.Dead {
		return false, "", err
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

// Adopt makes the calling process the monitor of running job id, whose
// monitor died while its command lived on (AdoptionDue): it takes the job
// over by compare-and-swap on the monitor's identity (gitstate.Store.Adopt:
// of any number of racing adopters one wins; a loser returns an error
// wrapping ErrNotAdoptable having done nothing), waits for the command by
// identity (it is not its parent), reads the exit status the recorder
// wrote, and goes on as the monitor would have: the exit code recorded
// first, the finalize steps (none had run: they start only after the exit
// code is in the record), then Finalize. A command gone with no recorded
// status (its process group was killed) ends the job failed (lost).
//
// Adoption covers a job with no exit code in its record only. Once one is
// recorded, a job whose monitor (or adopter) dies is tier 2's, as before:
// the reaper finalizes it, and a finalize step that had been stamped
// started is not run again (at most once), nor are the steps after it.
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
	say("adopted job %s (pid %d): its monitor (pid %d) died while its command (pid %d) lived; waiting for the command", id, self.PID, old.PID, j.Command.PID)

	waitGone(j.Command)
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
	return e.afterCommand(ctx, monitored{id: id, self: self, job: j, worktree: wt, stage: stage, log: logf, logCap: logCap, say: say}, code)
}

// LostReason is the reason of a job whose command ended with no exit
// status recorded (the reaper's tier 1 uses the same word).
const LostReason = "lost"

// waitGone returns once the process id is no longer alive (dead by
// identity, or no longer judgeable). The caller is not its parent: it
// waits on a pidfd where the kernel has them (Linux 5.3+: woken at the
// exit), else polls with a backoff up to 250 ms.
func waitGone(id procid.Identity) {
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
			return
		}
		if pidfd {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, perr := unix.Poll(fds, 1000); perr == nil || perr == unix.EINTR {
				continue
			}
		}
		time.Sleep(backoff)
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
// that needs one (AdoptionDue), and returns the ids it started one for.
func (e *Env) adoptOrphans(ctx context.Context, jobs []*gitstate.Job) (started []string, errs []error) {
	if e.Adopter == nil {
		return nil, nil
	}
	for _, j := range jobs {
		if j.Status != gitstate.Running || !procid.Local(j.Monitor) {
			continue
		}
		due, _, err := e.AdoptionDue(j, procid.GroupLiveness)
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
		started = append(started, j.ID)
	}
	return started, errs
}
