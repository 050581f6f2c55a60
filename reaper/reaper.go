// Package reaper ends jobs whose processes are gone. One pass (RunOnce)
// judges every running job by three tiers of liveness, repairs advances lost
// to a crash, reclaims stale merge leases and finishes the worktree moves
// merges left under way (merges/<target>.toml). Any number of passes may run
// at once: correctness comes from the per-job claims, and the reaper's only
// write to a job record is the terminal flip, made by the shared finalize.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// Tier names, as actions and ended_by report them.
const (
	TierDead       = "dead"
	TierExitCode   = "exit_code"
	TierMaxRunning = "max_running"
	TierRepair     = "repair"
	TierLease      = "lease"
	TierSync       = "sync"
	// TierUndecodable ends a running job whose record does not decode
	// (gitstate.Store.EndUndecodable).
	TierUndecodable = "undecodable"
)

// ReasonLost and ReasonTimeout are the reasons of tier-1 and tier-3 reaps.
const (
	ReasonLost    = "lost"
	ReasonTimeout = "timeout"
)

// StopGraceDefault is how long a timed-out job's process group has between
// TERM and KILL.
const StopGraceDefault = 5 * time.Second

// LeaseReclaimer reclaims stale merge leases; the lease package provides it.
type LeaseReclaimer interface {
	// ReclaimStale deletes every stale lease record (or, dry, reports what
	// it would delete) and returns the targets, with an error per target
	// that could not be judged.
	ReclaimStale(ctx context.Context, dryRun bool) (reclaimed []string, errs map[string]error)
}

// Options tune one pass.
type Options struct {
	// DryRun judges everything and writes nothing at all: no claim, no
	// streak, no snapshot.
	DryRun bool
	// Now is the wall clock (time.Now when nil).
	Now func() time.Time
	// BootNow is CLOCK_BOOTTIME (gitstate.BootTime when nil); ok false
	// when it cannot be read. Same-boot ages that decide a tier are
	// measured with it, so that wall-clock jumps do not move them.
	BootNow func() (d time.Duration, ok bool)
	// Leases, when set and lease reclaim is enabled, is called once per pass.
	Leases LeaseReclaimer
	// StopGrace overrides StopGraceDefault.
	StopGrace time.Duration
	// DeferSlow leaves alone the tier-2 jobs whose finalize would run a
	// command gate (which may take minutes), counting them in
	// Snapshot.Deferred, for a caller with a small time budget (a git hook)
	// to hand to a background pass.
	DeferSlow bool
	// Explain checks every process of every running job, not only up to
	// the first one found alive, and reports what the pass saw of each
	// job and did about it in Snapshot.Running. The verdicts are the same.
	Explain bool
}

// readClock is the pass's reading of the wall and boot clocks.
func (opts Options) readClock() clock {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	bootNow := gitstate.BootTime
	if opts.BootNow != nil {
		bootNow = opts.BootNow
	}
	c := clock{now: now()}
	if b, ok := bootNow(); ok {
		if id, err := procid.BootID(); err == nil {
			c.boot, c.bootID = b, id
		}
	}
	return c
}

// RunOnce makes one reaper pass over the jobs of env and returns its
// snapshot, which (unless dry) is also saved as the last pass. Errors on one
// job or lease are recorded in the snapshot and the pass goes on; the error
// returned is for the pass as a whole (the store cannot be listed).
func RunOnce(ctx context.Context, env *pipeline.Env, opts Options) (*Snapshot, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	c := opts.readClock()
	start := c.now
	snap := &Snapshot{At: start.UTC(), DryRun: opts.DryRun, Actions: []Action{}, Errors: []PassError{}}
	cfg := env.Config.Reaper
	if opts.DryRun && !env.Store.ReadOnly {
		env.Store.ReadOnly = true
		defer func() { env.Store.ReadOnly = false }()
	}
	if !cfg.Enabled {
		snap.Disabled = true
		return snap, nil
	}
	listed, unreadable, err := env.Store.RunningSummarised()
	if err != nil {
		return snap, err
	}
	for _, u := range unreadable {
		if endUndecodable(ctx, env, opts, u, snap) {
			continue
		}
		snap.Errors = append(snap.Errors, PassError{Path: u.Path, Message: u.Err.Error()})
	}
	// A job read from its marker's summary is judged from it only to be
	// left alone; anything else is judged again from its record
	// (judgeSummary), so every action is decided as before, from the record.
	running := make([]*gitstate.Job, len(listed))
	summarised := make([]bool, len(listed))
	for i, j := range listed {
		running[i], summarised[i] = j.Job, j.Summarised
	}
	snap.Scanned = len(running)

	// Judge every job and count dead observations under the state lock, so
	// that concurrent passes count one observation per interval between
	// them; act afterwards, outside the lock.
	table := &procid.GroupTable{}
	verdicts := make([]verdict, len(running))
	// reread marks the summarised jobs whose summary did not settle their
	// verdict: their records are read between two turns of the state lock,
	// not while holding it, and they are judged again in the second turn.
	reread := make([]bool, len(running))
	judgeAll := func(only []bool) func(st *State) error {
		return func(st *State) error {
			alive := map[string]bool{}
			for i, j := range running {
				alive[j.ID] = true
				switch {
				case only != nil && !only[i]:
				case summarised[i]:
					verdicts[i], reread[i] = judgeSummary(j, st, cfg, c, table, !opts.DryRun, opts.Explain)
				default:
					verdicts[i] = judge(j, st, cfg, c, table, !opts.DryRun, opts.Explain)
				}
			}
			for id := range st.Streaks {
				if !alive[id] {
					delete(st.Streaks, id)
				}
			}
			for id := range st.Seen {
				if !alive[id] {
					delete(st.Seen, id)
				}
			}
			return nil
		}
	}
	// The next pass is due an interval after this one, or after the last
	// one saved when this one is dry.
	next := c.now.Add(cfg.Interval())
	nextAt := &next
	judgeLocked := func(fn func(st *State) error) error {
		if opts.DryRun {
			st, err := LoadState(env.Store.Dir())
			if err != nil {
				snap.Errors = append(snap.Errors, PassError{Message: err.Error()})
				st = &State{Streaks: map[string]Streak{}, Seen: map[string]Seen{}}
			}
			fn(st)
			nextAt = nextPass(st.LastPass, cfg)
		} else if err := updateState(ctx, env.Store.Dir(), fn); err != nil {
			snap.Errors = append(snap.Errors, PassError{Message: err.Error()})
			if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
				return err
			}
		}
		return nil
	}
	if err := judgeLocked(judgeAll(nil)); err != nil {
		return snap, err
	}
	again := false
	for i := range running {
		if !reread[i] {
			continue
		}
		full, err := env.Store.Get(running[i].ID)
		if err != nil {
			verdicts[i], reread[i] = verdict{err: fmt.Errorf("read the record to judge it: %w", err)}, false
			continue
		}
		running[i], summarised[i], again = full, false, true
	}
	if again {
		if err := judgeLocked(judgeAll(reread)); err != nil {
			return snap, err
		}
	}

	for i, j := range running {
		if ctx.Err() != nil {
			// Out of budget: the rest is left for the next pass.
			snap.Deferred += len(running) - i
			break
		}
		v := adoption(env, j, verdicts[i], table)
		// What the pass did, said on each way out; reported with what it
		// saw when asked.
		outcome := func() string {
			if v.err != nil {
				snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: v.err.Error()})
			}
			if v.observed {
				snap.Observed++
			}
			if v.tier == "" {
				if v.note == "" {
					return "left running"
				}
				snap.Actions = append(snap.Actions, Action{Job: j.ID, Tier: TierDead, Outcome: v.note, Observation: true})
				if opts.DryRun {
					return fmt.Sprintf("would count observation %d of %d", v.seen.streak.Count, cfg.DeadTicks)
				}
				return fmt.Sprintf("observation %d of %d counted", v.seen.streak.Count, cfg.DeadTicks)
			}
			if v.tier == TierAdopt {
				out, started := startAdopter(ctx, env, j, v, opts, snap)
				if started || v.fallback == nil {
					return out
				}
				// No adopter: tier 2 is the backstop.
				v = *v.fallback
			}
			if v.tier == TierExitCode && opts.DeferSlow && env.HasCommandGates(j) {
				snap.Deferred++
				return "deferred to a background pass"
			}
			act := Action{Job: j.ID, Tier: v.tier}
			if opts.DryRun {
				act.Outcome = "would end: " + v.why
				snap.Actions = append(snap.Actions, act)
				return "would end it"
			}
			res, err := env.Finalize(ctx, j.ID, v.ending)
			switch {
			case err != nil:
				snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: err.Error()})
				return "could not end it: " + err.Error()
			case !res.Won:
				// Someone else ended it first: nothing to do, nothing done.
				return "ended by someone else first"
			}
			act.Outcome = fmt.Sprintf("%s (%s)", res.Job.Status, res.Job.Reason)
			outcome := "ended: " + act.Outcome
			if res.Next != nil {
				act.Outcome += ", advanced to " + res.Next.ID
			}
			if res.Worktree != "" {
				act.Outcome += "; " + res.Worktree
			}
			switch v.tier {
			case TierDead:
				snap.Tier1++
			case TierExitCode:
				snap.Tier2++
			case TierMaxRunning:
				snap.Tier3++
				v.stop = true
			}
			if v.stop {
				grace := opts.StopGrace
				if grace == 0 {
					grace = StopGraceDefault
				}
				if err := pipeline.StopGroups(res.Job, grace); err != nil {
					snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: "stop processes: " + err.Error()})
				}
			}
			snap.Actions = append(snap.Actions, act)
			return outcome
		}()
		if opts.Explain {
			e := explain(j, v, cfg, c, nextAt)
			e.Outcome = outcome
			snap.Running = append(snap.Running, e)
		}
	}

	// The monitors not checked in this pass (their jobs ended) need no
	// file kept open for the next.
	monitors.Sweep()

	if ctx.Err() == nil {
		repair(ctx, env, opts, snap)
	}
	if opts.Leases != nil && env.Config.Lease.ReclaimEnabled && ctx.Err() == nil {
		reclaimed, errs := opts.Leases.ReclaimStale(ctx, opts.DryRun)
		for _, t := range reclaimed {
			out := "reclaimed"
			if opts.DryRun {
				out = "would reclaim"
			}
			snap.Actions = append(snap.Actions, Action{Lease: t, Tier: TierLease, Outcome: out})
		}
		if !opts.DryRun {
			snap.LeasesReclaimed = len(reclaimed)
		}
		for t, err := range errs {
			snap.Errors = append(snap.Errors, PassError{Lease: t, Message: err.Error()})
		}
	}

	if ctx.Err() == nil {
		finishOwed(ctx, env, opts, snap)
	}

	snap.DurationMS = max(now().Sub(start).Milliseconds(), 0)
	if !opts.DryRun {
		// Saved even when the budget ran out: the snapshot says so.
		if err := updateState(context.WithoutCancel(ctx), env.Store.Dir(), func(st *State) error {
			st.LastPass = snap
			return nil
		}); err != nil {
			snap.Errors = append(snap.Errors, PassError{Message: err.Error()})
		}
	}
	return snap, nil
}

// finishOwed finishes the worktree moves that merges left under way
// (merges/<target>.toml: a crash just after the ref update), each under its
// target's lease taken without waiting, so a checked-out target is not left
// behind its ref until the next merge into it. A lease held by a live
// holder is left alone: that holder finishes the move before it merges.
func finishOwed(ctx context.Context, env *pipeline.Env, opts Options, snap *Snapshot) {
	owed, err := merge.New(env.Repo).FinishOwed(ctx, "reaper", opts.DryRun)
	if err != nil {
		snap.Errors = append(snap.Errors, PassError{Message: err.Error()})
		return
	}
	for _, o := range owed {
		switch {
		case o.Path != "":
			snap.Errors = append(snap.Errors, PassError{Path: o.Path, Message: o.Err.Error()})
		case opts.DryRun:
			snap.Actions = append(snap.Actions, Action{Lease: o.Target, Tier: TierSync, Outcome: "would finish the worktree move of the last merge into " + o.Target})
		case o.Err != nil:
			snap.Errors = append(snap.Errors, PassError{Lease: o.Target, Message: "finish the worktree move of the last merge: " + o.Err.Error()})
		case o.Finished:
			snap.Actions = append(snap.Actions, Action{Lease: o.Target, Tier: TierSync, Outcome: "finished the worktree move of the last merge into " + o.Target})
		}
	}
}

// repair advances done jobs whose next job a crash lost.
func repair(ctx context.Context, env *pipeline.Env, opts Options, snap *Snapshot) {
	l, err := env.Store.PendingAdvances()
	if err != nil {
		snap.Errors = append(snap.Errors, PassError{Message: err.Error()})
		return
	}
	for _, u := range l.Unreadable {
		snap.Errors = append(snap.Errors, PassError{Path: u.Path, Message: u.Err.Error()})
	}
	for _, j := range l.Jobs {
		if !env.NeedsAdvance(j) {
			if !opts.DryRun {
				env.Store.ClearAdvance(j.ID)
			}
			continue
		}
		if opts.DryRun {
			snap.Actions = append(snap.Actions, Action{Job: j.ID, Tier: TierRepair, Outcome: "would enqueue " + j.NextJob})
			continue
		}
		next, created, err := env.RepairAdvance(ctx, j)
		if err != nil {
			snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: err.Error()})
			continue
		}
		if !created {
			continue // a racing pass or the original advancer made it
		}
		snap.Repaired++
		snap.Actions = append(snap.Actions, Action{Job: j.ID, Tier: TierRepair, Outcome: "enqueued " + next.ID})
	}
}
