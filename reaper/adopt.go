package reaper

import (
	"context"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// TierAdopt starts a new monitor for a running job whose monitor died while
// its command lived (pipeline.Env.AdoptionDue): the job's outcome is still
// to be had, so it is neither left alone nor ended lost.
const TierAdopt = "adopt"

// ActionAdopt: a pass starts (or, dry, would start) an adopter for the job.
const ActionAdopt = "adopt"

// adoption turns the verdict v on running job j into TierAdopt when the
// job needs an adopter: its monitor is dead by identity, no exit code is
// recorded, and its command lives or recorded its exit status. That
// replaces "left running" (the command lives: without an adopter nobody
// would record its end) and tier 1 (every process dead, but the recorder
// wrote the status: the job is not lost). Without env.Adopter (no binary to
// start) v stands, as before adoption existed.
func adoption(env *pipeline.Env, j *gitstate.Job, v verdict, groups groupChecker) verdict {
	if env.Adopter == nil || (v.tier != "" && v.tier != TierDead) || v.err != nil || !v.seen.judgeable || j.ExitCode != nil {
		return v
	}
	if len(v.seen.procs) == 0 || v.seen.procs[0].live != procid.Dead {
		return v // the monitor lives (or could not be judged)
	}
	due, why, err := env.AdoptionDue(j, groups.GroupLiveness)
	if err != nil {
		v.err = err
		return v
	}
	if !due {
		return v
	}
	return verdict{tier: TierAdopt, why: why, seen: v.seen}
}

// startAdopter starts an adopter for j, or says what a dry pass would do.
// The adopter's compare-and-swap on the monitor identity picks one winner
// among the adopters any number of passes start; losers do nothing.
func startAdopter(ctx context.Context, env *pipeline.Env, j *gitstate.Job, v verdict, opts Options, snap *Snapshot) string {
	act := Action{Job: j.ID, Tier: TierAdopt}
	if opts.DryRun {
		act.Outcome = "would start a new monitor: " + v.why
		snap.Actions = append(snap.Actions, act)
		return "would adopt it"
	}
	if err := env.Adopter(ctx, j.ID); err != nil {
		snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: "start a new monitor: " + err.Error()})
		return "could not start a new monitor: " + err.Error()
	}
	snap.Adopted++
	act.Outcome = "started a new monitor: " + v.why
	snap.Actions = append(snap.Actions, act)
	return "started a new monitor"
}
