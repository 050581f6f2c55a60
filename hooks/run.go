package hooks

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
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
	if err != nil {
		return // another pass is running (or the lock is unusable): skip
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
		return
	}
	recordDue(env.Store.Dir(), env.Config.Path, snap.At, interval)
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

// background starts `exe reap` detached, in its own session, its output
// appended to logs/reaper.log.
func background(exe string, env *pipeline.Env) error {
	logf, err := os.OpenFile(env.Store.LogPath("reaper"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"reap"}
	if env.Config.Path != "" {
		args = []string{"--config", env.Config.Path, "reap"}
	}
	cmd := exec.Command(exe, args...)
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
