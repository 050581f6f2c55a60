package reaper

import (
	"fmt"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// verdict is what a pass decided about one running job.
type verdict struct {
	tier     string // "" to leave the job alone
	why      string
	ending   pipeline.Ending
	observed bool   // a dead observation was counted this pass
	note     string // what happened to a job left alone, worth reporting
	err      error
}

// groupChecker answers process-group liveness (a procid.GroupTable).
type groupChecker interface {
	GroupLiveness(leader procid.Identity) (procid.Liveness, error)
}

// judge applies the three tiers to one running job. count says whether to
// record the observation in st (false for a dry run, which writes nothing).
func judge(j *gitstate.Job, st *State, cfg config.Reaper, now time.Time, groups groupChecker, count bool) verdict {
	// Tier 3 first: it applies to every job, wherever it runs. A start time
	// in the future (the clock moved back) is never old enough.
	if !j.StartedAt.IsZero() {
		if age := now.Sub(j.StartedAt); age > cfg.MaxRunning() {
			return verdict{tier: TierMaxRunning, why: fmt.Sprintf("running for %s, longer than max_running_s = %d", age.Round(time.Second), cfg.MaxRunningS),
				ending: pipeline.Ending{EndedBy: gitstate.EndedByReaperMaxRunning, Failure: ReasonTimeout}}
		}
	}
	// Another host, boot or pid namespace: only tier 3 can judge it. A
	// reaper whose /proc is not its own judges nothing and says so.
	if ok, err := procid.Judgeable(j.Monitor); !ok {
		return verdict{err: err}
	}
	dead, why, err := allDead(j, groups)
	if err != nil {
		return verdict{err: err}
	}

	if j.ExitCode != nil {
		// Tier 2: the exit code is recorded, the job never ended. A live
		// monitor is left to finish inside the grace.
		code := *j.ExitCode
		onlyIf := func(cur *gitstate.Job) bool { return cur.ExitCode != nil && *cur.ExitCode == code }
		ending := pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode, OnlyIf: onlyIf}
		if dead {
			return verdict{tier: TierExitCode, why: "exit code recorded and " + why, ending: ending}
		}
		if age := now.Sub(j.FinishedAt); !j.FinishedAt.IsZero() && age >= cfg.FinalizeGrace() {
			return verdict{tier: TierExitCode, why: fmt.Sprintf("exit code recorded %s ago, past finalize_grace_s = %d", age.Round(time.Second), cfg.FinalizeGraceS), ending: ending}
		}
		return verdict{}
	}

	// Tier 1: no exit code. Count consecutive dead observations, at most
	// one per interval; any sign of life resets the streak.
	s, had := st.Streaks[j.ID]
	if !dead {
		if had && count {
			delete(st.Streaks, j.ID)
		}
		return verdict{}
	}
	v := verdict{}
	since := now.Sub(s.Last)
	switch {
	case !had || since >= cfg.Interval():
		s.Count++
		s.Last = now
		v.observed = true
	case since < 0:
		// The clock moved back: neither count nor reset.
	}
	if count {
		st.Streaks[j.ID] = s
	}
	if s.Count >= cfg.DeadTicks {
		v.tier, v.why = TierDead, fmt.Sprintf("%s on %d consecutive observations", why, s.Count)
		v.ending = pipeline.Ending{EndedBy: gitstate.EndedByReaperDead, Failure: ReasonLost,
			OnlyIf: func(cur *gitstate.Job) bool { return cur.ExitCode == nil }}
		return v
	}
	if v.observed {
		v.note = fmt.Sprintf("%s: observation %d of %d", why, s.Count, cfg.DeadTicks)
		if !count {
			v.note = fmt.Sprintf("would count observation %d of %d: %s", s.Count, cfg.DeadTicks, why)
			v.observed = false
		}
	}
	return v
}

// allDead reports whether every process of the job is confirmed dead by
// identity: its monitor, the command's process group (until the command is
// stamped, the monitor alone speaks for the job) and a finalize step's.
func allDead(j *gitstate.Job, groups groupChecker) (bool, string, error) {
	l, err := procid.Check(j.Monitor)
	if err != nil || l != procid.Dead {
		return false, "", err
	}
	why := "monitor dead"
	for _, g := range []struct {
		name string
		id   procid.Identity
	}{{"command", j.Command}, {"finalize step", j.Finalizer}} {
		if g.id.IsZero() {
			continue
		}
		l, err := groups.GroupLiveness(g.id)
		if err != nil || l != procid.Dead {
			return false, "", err
		}
		why += ", " + g.name + " process group gone"
	}
	return true, why, nil
}
