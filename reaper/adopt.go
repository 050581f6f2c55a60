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
// job needs an adopter (pipeline.Env.AdoptionDue): its monitor is dead by
// identity and
//   - no exit code is recorded, and its command lives or recorded its exit
//     status. That replaces "left running" (the command lives: without an
//     adopter nobody would record its end) and tier 1 (every process dead,
//     but the recorder wrote the status: the job is not lost);
//   - or exit code 0 is recorded and finalize steps are still owed: the
//     monitor died in them. That replaces "left running" (a step still
//     runs) and tier 2, which stays the backstop: the verdict it replaces
//     is kept as its fallback, taken when no adopter can be started; and
//     the job is not adopted once it has had pipeline.MaxAdoptions
//     adopters (AdoptionDue) or its last progress stamp is older than
//     finalize_grace_s on the pass's clock (an adopter that never wins,
//     never stamps).
//
// Without env.Adopter (no binary to start) v stands, as before adoption
// existed.
func adoption(env *pipeline.Env, j *gitstate.Job, v verdict, groups groupChecker) verdict {
	if env.Adopter == nil || v.err != nil || !v.seen.judgeable {
		return v
	}
	switch {
	case v.tier == "" || v.tier == TierDead:
	case v.tier == TierExitCode && j.ExitCode != nil:
	default:
		return v
	}
	if len(v.seen.procs) == 0 || v.seen.procs[0].live != procid.Dead {
		return v // the monitor lives (or could not be judged)
	}
	if j.ExitCode != nil && v.seen.progressOK && v.seen.progressAge >= env.Config.Reaper.FinalizeGrace() {
		return v
	}
	due, why, err := env.AdoptionDue(j, groups.GroupLiveness)
	if err != nil {
		v.err = err
		return v
	}
	if !due {
		return v
	}
	a := verdict{tier: TierAdopt, why: why, seen: v.seen}
	if v.tier == TierExitCode {
		a.fallback = &v
	}
	return a
}

// startAdopter starts an adopter for j, or says what a dry pass would do,
// and reports whether it did (or would). The adopter's compare-and-swap on
// the monitor identity picks one winner among the adopters any number of
// passes start; losers do nothing.
func startAdopter(ctx context.Context, env *pipeline.Env, j *gitstate.Job, v verdict, opts Options, snap *Snapshot) (string, bool) {
	act := Action{Job: j.ID, Tier: TierAdopt}
	if opts.DryRun {
		act.Outcome = "would start a new monitor: " + v.why
		snap.Actions = append(snap.Actions, act)
		return "would adopt it", true
	}
	if err := env.Adopter(ctx, j.ID); err != nil {
		snap.Errors = append(snap.Errors, PassError{Job: j.ID, Message: "start a new monitor: " + err.Error()})
		return "could not start a new monitor: " + err.Error(), false
	}
	snap.Adopted++
	act.Outcome = "started a new monitor: " + v.why
	snap.Actions = append(snap.Actions, act)
	return "started a new monitor", true
}
