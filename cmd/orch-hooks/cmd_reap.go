//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"

	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands,
		&command{name: "reap", args: "[--dry-run] [-v] [--json]", summary: "one reaper pass; print what it did (or would do)",
			help: `Judges every running job by the three tiers of liveness (dead processes
on dead_ticks observations; exit code recorded but never finalized; running
past max_running_s), ends the dead ones through the shared finalize path,
enqueues next jobs a crash lost, and reclaims stale merge leases. Prints one
line per action and a summary on stderr that says what the pass saw of
the running jobs; -v adds one line per running job: each process alive or
dead by identity, the dead-observation streak, the exit code and finalize
grace left, the time to max_running, and what the pass did and why. --json
prints the pass snapshot on stdout, with "running": one report per job.
--dry-run writes nothing at all. ORCH_REAPER_ENABLED=0 makes it a no-op
that says so.

In remote mode the pass starts with the shared queue: running shared jobs
whose record this machine has seen unchanged for heartbeat_ttl_s (on its
own clock) are expired, and ends of this machine's shared jobs that had
not reached the remote are settled there; nothing is claimed. --json
adds "shared": {"claimed", "expired", "settled", "errors"}; --dry-run
leaves the shared queue alone.`,
			setup: setupReap},
	)
}

func setupReap(fs *flag.FlagSet, c *cli) func([]string) error {
	dry := fs.Bool("dry-run", false, "judge and report, write nothing")
	asJSON := fs.Bool("json", false, "print the pass snapshot as JSON")
	verbose := fs.Bool("v", false, "one line per running job: what the pass saw and did")
	return func(args []string) error {
		if err := needArgs("reap", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		env.Store.Actor = "reaper"
		// Hold the pass lock when free so hooks skip meanwhile; never wait
		// for it: correctness comes from the per-job claims.
		// A pass lock this user cannot take (left by another user, or not
		// a file) is an error to report, not a reason to skip the pass.
		var lockErr error
		if !*dry {
			unlock, err := statefile.TryLock(env.Store.LockPath(hooks.PassLock))
			switch {
			case err == nil:
				defer unlock()
			case !errors.Is(err, statefile.ErrLocked):
				lockErr = err
			}
		}
		// Remote mode: expiry and settle repair on the shared queue
		// first (capacity 0: a reaper claims nothing).
		var rep pipeline.SharedReport
		var sharedErr error
		shared := env.Shared != nil && !*dry && !reaperDisabled(env)
		if shared {
			rep, sharedErr = c.sharedPass(env, 0, *asJSON)
		}
		snap, err := reaper.RunOnce(c.ctx, env, reaper.Options{DryRun: *dry, Explain: true, Leases: lease.Open(env.Repo.StateDir())})
		if err != nil {
			return err
		}
		failed := passFailure(snap, lockErr)
		if sharedErr != nil || len(rep.Errors) > 0 {
			failed = errors.Join(failed, fmt.Errorf("shared queue pass incomplete: %w", errors.Join(append([]error{sharedErr}, rep.Errors...)...)))
		}
		if *asJSON {
			var out any = snap
			if shared {
				out = withShared{snap, sharedJSON(rep, sharedErr)}
			}
			if err := writeJSON(c.stdout, out); err != nil {
				return err
			}
			return failed
		}
		if snap.Disabled {
			c.errf("reaper disabled (reaper.enabled = false or ORCH_REAPER_ENABLED=0): nothing done\n")
			return nil
		}
		for _, a := range snap.Actions {
			c.errf("%s\n", a)
		}
		if *verbose {
			for _, e := range snap.Running {
				c.errf("%s\n", termtext.Line(e.Job+": "+e.String()))
			}
		}
		for _, e := range snap.Errors {
			c.errf("error: %s\n", passErrorString(e))
		}
		c.errf("%s\n", passSummary(snap))
		return failed
	}
}

// withShared is reap --json in remote mode: the pass snapshot's fields,
// and "shared", what the shared queue's pass did.
type withShared struct {
	*reaper.Snapshot
	Shared map[string]any `json:"shared"`
}

// reaperDisabled: the reaper is off (reaper.enabled, or
// ORCH_REAPER_ENABLED=0 over it), and the shared queue's expiry with it.
func reaperDisabled(env *pipeline.Env) bool { return !env.Config.Reaper.Enabled }

// passFailure is reap's error (exit 1) when the pass could not do its work:
// the pass lock, a job, a lease or the reaper's own state could not be
// read or written (a permission error, a full disk, a lock file that is not
// a file), so a job that should have ended may still be running. Records
// that cannot be parsed are only reported (status shows them; exit 0): they
// never stop a pass, and the rest of the pass was done.
func passFailure(snap *reaper.Snapshot, lockErr error) error {
	n := 0
	var first string
	for _, e := range snap.Errors {
		// An unreadable record: a job's (Path), or a lease's, which the
		// lease manager keys by its path rather than a target name.
		if e.Path != "" && e.Job == "" && e.Lease == "" || filepath.IsAbs(e.Lease) {
			continue
		}
		if n++; n == 1 {
			first = passErrorString(e)
		}
	}
	if lockErr != nil {
		n++
		first = lockErr.Error()
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("reaper pass incomplete: %d error(s), the first: %s", n, first)
}

// passErrorString is a pass error on one line, control characters escaped:
// a message can quote a path or a record's bytes.
func passErrorString(e reaper.PassError) string {
	s := e.Message
	switch {
	case e.Job != "":
		s = e.Job + ": " + e.Message
	case e.Lease != "":
		s = "lease " + e.Lease + ": " + e.Message
	case e.Path != "":
		s = e.Path + ": " + e.Message
	}
	return termtext.Line(s)
}

func passSummary(s *reaper.Snapshot) string {
	prefix := "pass"
	if s.DryRun {
		prefix = "dry run"
	}
	deferred := ""
	if s.Deferred > 0 {
		deferred = fmt.Sprintf(", %d deferred", s.Deferred)
	}
	return fmt.Sprintf("%s: %s, reaped %d dead / %d exit-code / %d max-running, %d observed, %d repaired, %d leases reclaimed%s, %d errors, %d ms",
		prefix, runningSummary(s), s.Tier1, s.Tier2, s.Tier3, s.Observed, s.Repaired, s.LeasesReclaimed, deferred, len(s.Errors), s.DurationMS)
}
