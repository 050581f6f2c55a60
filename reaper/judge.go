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
	stop     bool   // the winner stops the job's process groups
	observed bool   // a dead observation was counted this pass
	note     string // what happened to a job left alone, worth reporting
	err      error
	seen     sight // what the verdict was made of, for explanations
	// fallback, for TierAdopt, is the tier-2 verdict the adoption replaced:
	// taken when no adopter can be started.
	fallback *verdict
}

// sight is what judge saw of one job on its way to the verdict: the same
// numbers the tiers compared, so that an explanation (Explain, a pass's
// Snapshot.Running) says exactly why the pass did what it did.
type sight struct {
	local     bool // on this host and boot
	judgeable bool // and in this pid namespace: tiers 1 and 2 apply
	procs     []procSeen
	dead      bool // every process confirmed dead by identity
	// Tier 3: the age of the job's start, when one could be measured.
	runningAge time.Duration
	runningOK  bool
	// Tier 2: the age of the last progress stamp, when one was compared.
	progressAge time.Duration
	progressOK  bool
	progressOf  string // "exit code recorded" or "finalize step k started"
	// Tier 1: the streak after this pass (counted: this pass counted an
	// observation), and how long since its last counted observation.
	streak      Streak
	streakOK    bool // a streak exists after this pass
	counted     bool
	streakSince time.Duration
}

// procSeen is one process (or process group) of a job and its liveness.
type procSeen struct {
	name  string // "monitor", "command", "finalize step"
	id    procid.Identity
	group bool // judged as a process group
	live  procid.Liveness
	err   error
}

// groupChecker answers process-group liveness (a procid.GroupTable).
type groupChecker interface {
	GroupLiveness(leader procid.Identity) (procid.Liveness, error)
}

// clock is one pass's reading of the time: the wall clock, and
// CLOCK_BOOTTIME on this boot (boot 0 when it could not be read). Same-boot
// ages are measured on the boot clock, which wall-clock jumps do not move;
// the wall clock serves stamps from elsewhere (another host, an older
// record) and is never trusted to run forwards.
type clock struct {
	now    time.Time
	boot   time.Duration
	bootID string
}

// stampAge is how long ago a job's monitor made a stamp (wall, and boot, its
// CLOCK_BOOTTIME, 0 when not recorded), measured for a job whose monitor
// runs on this boot (local) on the boot clock. A wall stamp in the future
// means the clock moved: the age is then measured from the first pass that
// saw the stamp (kept in *seen, written back only when count), so a jump
// back costs at most the normal wait once more, never the jump. A negative
// age is never old enough: ok is false when there is no stamp at all, and
// on a future stamp's first sighting.
func (c clock) stampAge(wall time.Time, boot time.Duration, local bool, seen **Sighting, count bool) (age time.Duration, ok bool) {
	forget := func() {
		if count {
			*seen = nil
		}
	}
	// A boot stamp ahead of the boot clock was not read in this time
	// namespace: not comparable, so the wall clock judges.
	if local && boot > 0 && c.boot >= boot {
		forget()
		return c.boot - boot, true
	}
	if wall.IsZero() {
		return 0, false
	}
	if age := c.now.Sub(wall); age >= 0 {
		forget()
		return age, true
	}
	s := *seen
	if s != nil && s.Stamp.Equal(wall) {
		if s.BootID == c.bootID && s.AtBoot > 0 && c.boot >= s.AtBoot {
			return c.boot - s.AtBoot, true
		}
		if age := c.now.Sub(s.At); age >= 0 {
			return age, true
		}
	}
	// First sighting (or the clock moved back past it too): measured
	// from now on, not yet old enough for anything.
	if count {
		*seen = &Sighting{Stamp: wall, At: c.now, AtBoot: c.boot, BootID: c.bootID}
	}
	return 0, false
}

// judge applies the three tiers to one running job. count says whether to
// record the observation in st (false for a dry run, which writes nothing).
// all makes it check every process of the job, for an explanation, where
// the verdict needs only up to the first one found not dead; the verdict is
// the same either way.
func judge(j *gitstate.Job, st *State, cfg config.Reaper, c clock, groups groupChecker, count, all bool) (v verdict) {
	local := procid.Local(j.Monitor)
	seen := st.Seen[j.ID]
	var sg sight
	sg.local = local
	defer func() {
		v.seen = sg
		if !count {
			return
		}
		if seen.Started == nil && seen.Progress == nil {
			delete(st.Seen, j.ID)
		} else {
			st.Seen[j.ID] = seen
		}
	}()
	// Tier 3 first: it applies to every job, wherever it runs.
	age, ok := c.stampAge(j.StartedAt, j.StartedBoot, local, &seen.Started, count)
	sg.runningAge, sg.runningOK = age, ok
	if ok && age > cfg.MaxRunning() {
		if all && local {
			// Not needed for the verdict; said in the explanation.
			if ok, _ := procid.Judgeable(j.Monitor); ok {
				sg.judgeable, sg.procs = true, checkProcs(j, groups, true)
			}
		}
		return verdict{tier: TierMaxRunning, why: fmt.Sprintf("running for %s, longer than max_running_s = %d", age.Round(time.Second), cfg.MaxRunningS),
			ending: pipeline.Ending{EndedBy: gitstate.EndedByReaperMaxRunning, Failure: ReasonTimeout}}
	}
	if !local {
		return verdict{} // another host or boot: only tier 3 can judge it
	}
	// Another pid namespace: only tier 3 can judge it. A reaper whose
	// /proc is not its own judges nothing and says so.
	if ok, err := procid.Judgeable(j.Monitor); !ok {
		return verdict{err: err}
	}
	sg.judgeable = true
	sg.procs = checkProcs(j, groups, all)
	dead, why, err := allDead(sg.procs)
	sg.dead = dead
	if err != nil {
		return verdict{err: err}
	}

	if j.ExitCode != nil {
		// Tier 2: the exit code is recorded, the job never ended. A live
		// monitor is left alone while it makes progress: until its last
		// progress stamp (the exit code recorded, or a finalize step
		// started) is older than the grace.
		// The claim re-checks what was judged: a progress stamp written
		// since this pass read the record means the monitor lives on.
		code := *j.ExitCode
		onlyIf := func(cur *gitstate.Job) bool {
			return cur.ExitCode != nil && *cur.ExitCode == code && cur.FinalizeStep == j.FinalizeStep && cur.Monitor == j.Monitor &&
				cur.ProgressAt.Equal(j.ProgressAt) && cur.ProgressBoot == j.ProgressBoot
		}
		ending := pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode, OnlyIf: onlyIf}
		wall, boot, what := j.FinishedAt, time.Duration(0), "exit code recorded"
		if !j.ProgressAt.IsZero() {
			wall, boot = j.ProgressAt, j.ProgressBoot
		}
		if j.FinalizeStep > 0 {
			what = fmt.Sprintf("finalize step %d started", j.FinalizeStep)
		}
		// Measured even when every process is dead: adoption (a dead
		// monitor's finalize steps) is bounded by the same grace.
		age, ok := c.stampAge(wall, boot, local, &seen.Progress, count)
		sg.progressAge, sg.progressOK, sg.progressOf = age, ok, what
		if dead {
			return verdict{tier: TierExitCode, why: "exit code recorded and " + why, ending: ending}
		}
		if ok && age >= cfg.FinalizeGrace() {
			// Ended while its monitor lives: whatever step it is stuck in
			// is stopped, so the reaped job causes no further effect.
			return verdict{tier: TierExitCode, stop: true, ending: ending,
				why: fmt.Sprintf("no progress since %s %s ago, past finalize_grace_s = %d", what, age.Round(time.Second), cfg.FinalizeGraceS)}
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
	since := c.now.Sub(s.Last)
	if s.BootID == c.bootID && s.LastBoot > 0 && c.boot >= s.LastBoot {
		since = c.boot - s.LastBoot
	}
	// A last observation in the future means the clock moved: this
	// observation counts, and the streak goes on from now.
	if !had || since >= cfg.Interval() || since < 0 {
		s.Count++
		s.Last, s.LastBoot, s.BootID = c.now, c.boot, c.bootID
		v.observed = true
	}
	sg.streak, sg.streakOK, sg.counted, sg.streakSince = s, true, v.observed, since
	if count {
		st.Streaks[j.ID] = s
	}
	if s.Count >= cfg.DeadTicks {
		v.tier, v.why = TierDead, fmt.Sprintf("%s on %d consecutive observations", why, s.Count)
		v.ending = pipeline.Ending{EndedBy: gitstate.EndedByReaperDead, Failure: ReasonLost,
			// An adopter that took the job over since this pass judged
			// it is a live monitor: the judgement no longer holds.
			OnlyIf: func(cur *gitstate.Job) bool { return cur.ExitCode == nil && cur.Monitor == j.Monitor }}
		// A dry run counts nothing: it says what it would end.
		v.observed = v.observed && count
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

// monitors checks the monitors of running jobs for every pass of this
// process, keeping the /proc file of each live one open for the next pass
// (procid.StatFiles): the check a pass makes of every job it leaves alone.
// RunOnce sweeps it after each pass.
var monitors procid.StatFiles

// checkProcs checks the processes of the job in the order allDead judges
// them: its monitor, the command's process group (until the command is
// stamped, the monitor alone speaks for the job) and a finalize step's.
// Unless all, it stops at the first one not confirmed dead.
func checkProcs(j *gitstate.Job, groups groupChecker, all bool) []procSeen {
	m := procSeen{name: "monitor", id: j.Monitor}
	m.live, m.err = monitors.Check(j.Monitor)
	ps := []procSeen{m}
	for _, g := range []struct {
		name string
		id   procid.Identity
	}{{"command", j.Command}, {"finalize step", j.Finalizer}} {
		if g.id.IsZero() {
			continue
		}
		if last := ps[len(ps)-1]; !all && (last.err != nil || last.live != procid.Dead) {
			break
		}
		p := procSeen{name: g.name, id: g.id, group: true}
		p.live, p.err = groups.GroupLiveness(g.id)
		ps = append(ps, p)
	}
	return ps
}

// allDead reports whether every process checked is confirmed dead by
// identity, and the first error of a process that could not be judged.
func allDead(ps []procSeen) (bool, string, error) {
	var why string
	for i, p := range ps {
		if p.err != nil || p.live != procid.Dead {
			return false, "", p.err
		}
		switch {
		case i == 0:
			why = p.name + " dead"
		default:
			why += ", " + p.name + " process group gone"
		}
	}
	return true, why, nil
}

// judgeSummary judges a job read from the summary in its running marker
// (only gitstate.SummaryFields), as judge does, when the verdict is to
// leave it alone — which those fields decide as its record would. Any other
// verdict (an action, an observation, an error) is not made: st is left as
// it was and reread is true, and the caller judges the job again from its
// record. So every write a pass makes is decided from the record, and the
// claim that makes it re-checks the record under the job's lock
// (pipeline.Ending.OnlyIf).
func judgeSummary(j *gitstate.Job, st *State, cfg config.Reaper, c clock, groups groupChecker, count, all bool) (v verdict, reread bool) {
	streak, hadStreak := st.Streaks[j.ID]
	seen, hadSeen := st.Seen[j.ID]
	v = judge(j, st, cfg, c, groups, count, all)
	if v.tier == "" && v.err == nil && v.note == "" && !v.observed {
		return v, false
	}
	delete(st.Streaks, j.ID)
	if hadStreak {
		st.Streaks[j.ID] = streak
	}
	delete(st.Seen, j.ID)
	if hadSeen {
		st.Seen[j.ID] = seen
	}
	return verdict{}, true
}
