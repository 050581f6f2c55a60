package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// PassLock is the name of the lock a hook's pass takes without waiting: when
// another pass holds it, the hook skips its own.
const PassLock = "pass"

// Run is what an installed hook does: a reaper pass within the configured
// budget, skipped at once when another pass is running or when the last
// pass is younger than reaper.interval_s. It prints nothing
// unless it acted, one line per action, each prefixed "orch-hooks: ". Work
// that needs longer than the budget is handed to a detached `exe reap`. A
// hook never fails the git command, so Run reports errors only to the pass
// snapshot and returns nothing.
func Run(ctx context.Context, env *pipeline.Env, exe string, out io.Writer) {
	// A pass ran within the interval: nothing can have become reapable by
	// tier 1 since (it counts one observation per interval), so most
	// commits cost a read of one small file.
	// The due file (NotDue) answers the same question sooner; this is the
	// answer when it is missing or stale, and it refreshes it.
	interval := env.Config.Reaper.Interval()
	if st, err := reaper.LoadState(env.Store.Dir()); err == nil && st.LastPass != nil {
		if age := time.Since(st.LastPass.At); age >= 0 && age < interval {
			recordDue(env.Store.Dir(), env.Config.Path, st.LastPass.At, interval)
			return
		}
	}
	unlock, err := statefile.TryLock(env.Store.LockPath(PassLock))
	if errors.Is(err, statefile.ErrLocked) {
		return // another pass is running: skip
	}
	if err != nil {
		// The lock is unusable (left by another user, or not a file): a
		// pass cannot be made, and saying nothing would hide it for good.
		Warn(env.Store.Dir(), env.Config.Path, interval, err, out)
		return
	}
	defer unlock()
	budget := env.Config.Hooks.Budget()
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	env.Store.Actor = "hook"
	snap, err := reaper.RunOnce(ctx, env, reaper.Options{
		DeferSlow: true,
		StopGrace: budget / 2,
		Leases:    lease.Open(env.Store.Dir()),
	})
	if err != nil || snap == nil {
		if err != nil && !busy(err) {
			Warn(env.Store.Dir(), env.Config.Path, interval, err, out)
		}
		return
	}
	recordDue(env.Store.Dir(), env.Config.Path, snap.At, interval)
	// Errors on one job or lease are in the snapshot (status shows them);
	// a state the pass could not write is said here too, once.
	for _, e := range snap.Errors {
		if e.Path == "" && e.Job == "" && e.Lease == "" && !strings.Contains(e.Message, statefile.ErrLockTimeout.Error()) {
			fmt.Fprintf(out, "orch-hooks: warning: reaper pass: %s\n", termtext.Line(e.Message))
			break
		}
	}
	for _, a := range snap.Actions {
		if a.Observation {
			continue
		}
		fmt.Fprintf(out, "orch-hooks: %s\n", a)
	}
	if snap.Deferred > 0 && exe != "" {
		if err := background(exe, env); err == nil {
			fmt.Fprintf(out, "orch-hooks: %d job(s) need a longer reaper pass: started orch-hooks reap in the background\n", snap.Deferred)
		}
	}
}

// busy reports whether err only means that another pass was in the way or
// the hook's budget ran out: nothing to tell the user about.
func busy(err error) bool {
	return errors.Is(err, statefile.ErrLockTimeout) || errors.Is(err, statefile.ErrLocked) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// Warn says on out, in one line, that a hook could not make its pass, and
// records the pass as made now in the due file so that the next hooks skip
// until interval has passed: the error is said once per interval, never on
// every commit and never silently. When even the due file cannot be
// written (the state dir is not writable at all), every hook says it.
func Warn(stateDir, configPath string, interval time.Duration, err error, out io.Writer) {
	fmt.Fprintf(out, "orch-hooks: warning: reaper pass not made: %s\n", termtext.Line(err.Error()))
	recordDue(stateDir, configPath, time.Now(), interval)
}

// WarnConfig says on out, in one line, that hooks make no reaper pass
// because the configuration is bad (err names file:line:key) and what to
// do, at most once per interval as Warn does: the due file records the
// config file as it is now, so the same broken file is not said again
// before interval has passed, and a change to it (another mistake, or the
// fix) is looked at by the next hook. interval comes from the environment
// or the default (config.IntervalFallback): the file cannot say it.
func WarnConfig(stateDir, configPath string, interval time.Duration, err error, out io.Writer) {
	again := "this warning repeats on every hook"
	if interval > 0 {
		again = fmt.Sprintf("this warning repeats every %s", interval)
	}
	fmt.Fprintf(out, "orch-hooks: warning: hooks make no reaper pass until the configuration is fixed: %s; fix it (orch-hooks status shows it too; %s)\n",
		termtext.Line(err.Error()), again)
	recordDue(stateDir, configPath, time.Now(), interval)
}

// background starts `exe reap` detached, in its own session, its output
// appended to logs/reaper.log.
func background(exe string, env *pipeline.Env) error {
	logf, err := env.Store.OpenLog("reaper")
	if err != nil {
		return err
	}
	defer logf.Close()
	// The repository and configuration this hook saw (MonitorArgs): from
	// the state dir alone, a --separate-git-dir repository's main worktree
	// is not known.
	cmd := exec.Command(exe, append(env.MonitorArgs(), "reap")...)
	cmd.Dir = env.Store.Dir()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// Disabled reports whether ORCH_HOOKS=0 turns hook runs off (every git
// process orch-hooks starts has it, so hooks never recurse).
func Disabled() bool { return os.Getenv("ORCH_HOOKS") == "0" }
