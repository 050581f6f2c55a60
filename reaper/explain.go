package reaper

import (
	"fmt"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// Actions an explanation names: what a pass does (or, from Explain, would
// do) about a running job.
const (
	ActionNone    = "none"    // left running
	ActionObserve = "observe" // a dead observation counted towards tier 1
	ActionReap    = "reap"    // ended by Tier
)

// Process states in an explanation.
const (
	ProcAlive   = "alive"
	ProcDead    = "dead"    // confirmed dead by identity (gone, or its pid reused)
	ProcZombie  = "zombie"  // exited, not yet reaped by its parent: dead
	ProcForeign = "foreign" // another host, boot or pid namespace: not judged here
	ProcUnknown = "unknown" // could not be read here (Detail says why)
	// ProcUnchecked: a pass that needed no more (it stops at the first
	// process found alive) did not look. Explain checks every process.
	ProcUnchecked = "unchecked"
)

// Explanation is what a reaper pass sees of one running job and what it
// does about it, in the numbers the tiers compare. Explain makes one for a
// pass that would run now, from the same judging code as RunOnce, so the
// two never disagree; RunOnce with Options.Explain reports one per job in
// Snapshot.Running, with the Outcome. The JSON keys are stable (README,
// "--json"); durations are whole seconds.
type Explanation struct {
	Job string `json:"job"`
	// Seen is the processes in a few words: "monitor dead, command alive".
	Seen    string   `json:"seen"`
	Monitor Process  `json:"monitor"`
	Command *Process `json:"command"` // null until the command is stamped
	// FinalizeStep is the process group of a finalize step under way.
	FinalizeStep *Process `json:"finalize_step"`
	ExitCode     *int     `json:"exit_code"`
	// DeadStreak is tier 1's count of consecutive dead observations,
	// null when there is none (a process lives, or the exit code is in).
	DeadStreak *DeadStreak `json:"dead_streak"`
	// FinalizeGraceLeftS is tier 2's time left before a job with an exit
	// code and a live process is reaped for want of progress; null unless
	// that is what the job waits for.
	FinalizeGraceLeftS *int64 `json:"finalize_grace_left_s"`
	// MaxRunningLeftS is the time left before tier 3 ends the job, 0 once
	// past; null while its start cannot be measured (a stamp in the future
	// on its first sighting).
	MaxRunningLeftS *int64 `json:"max_running_left_s"`
	Action          string `json:"action"` // ActionNone, ActionObserve, ActionReap
	Tier            string `json:"tier"`   // the tier that reaps, "" otherwise
	Why             string `json:"why"`
	// Outcome is what the pass did, for a pass's own report (empty from
	// Explain): "failed (lost)", "observation 1 of 3 counted", ...
	Outcome string `json:"outcome,omitempty"`
	// NextPassAt is when the next pass is due: the last pass plus
	// reaper.interval_s (hooks and watch make it then; reap at any time).
	// Null when no pass has run yet.
	NextPassAt  *time.Time `json:"next_pass_at"`
	NextPassInS *int64     `json:"next_pass_in_s"`
}

// Process is one process (the monitor) or process group (the command, a
// finalize step) of a job, as a pass judges it: by identity, never by a
// bare pid.
type Process struct {
	PID    int    `json:"pid"`
	State  string `json:"state"` // ProcAlive, ProcDead, ...
	Detail string `json:"detail"`
}

// DeadStreak is a tier-1 streak: Count consecutive dead observations of
// Of (dead_ticks) after the pass; the next one counts no sooner than
// NextObservationInS from now.
type DeadStreak struct {
	Count              int   `json:"count"`
	Of                 int   `json:"of"`
	NextObservationInS int64 `json:"next_observation_in_s"`
}

// Explain says what a reaper pass made now would see and do about each
// running job of jobs (the others are skipped), writing nothing: it judges
// them with the pass's own code against the reaper's state file in
// stateDir, and checks every process of each. opts gives the clocks (Now,
// BootNow). An unreadable state file is the error returned, with the
// explanations a pass would then make (it starts a fresh state). env is
// the pass's: its state dir, and whether the pass would start a new
// monitor for a job (env.Adopter set; a job whose monitor died while its
// command lived or recorded its status).
func Explain(env *pipeline.Env, cfg config.Reaper, jobs []*gitstate.Job, opts Options) ([]Explanation, error) {
	c := opts.readClock()
	st, err := LoadState(env.Store.Dir())
	if err != nil {
		st = &State{Streaks: map[string]Streak{}, Seen: map[string]Seen{}}
	}
	table := &procid.GroupTable{}
	out := []Explanation{}
	for _, j := range jobs {
		if j.Status != gitstate.Running {
			continue
		}
		if !cfg.Enabled {
			e := Explanation{Job: j.ID, Action: ActionNone, Why: "reaper disabled (reaper.enabled = false or ORCH_REAPER_ENABLED=0)",
				Monitor: Process{PID: j.Monitor.PID, State: ProcUnchecked}, ExitCode: j.ExitCode}
			e.Seen = "not judged"
			out = append(out, e)
			continue
		}
		v := adoption(env, j, judge(j, st, cfg, c, table, false, true), table)
		out = append(out, explain(j, v, cfg, c, nextPass(st.LastPass, cfg)))
	}
	return out, err
}

// nextPass is when the pass after last is due.
func nextPass(last *Snapshot, cfg config.Reaper) *time.Time {
	if last == nil {
		return nil
	}
	t := last.At.Add(cfg.Interval())
	return &t
}

// explain turns a verdict into an explanation, predicted: Action is what
// a pass that judged v does, before it tries.
func explain(j *gitstate.Job, v verdict, cfg config.Reaper, c clock, next *time.Time) Explanation {
	sg := v.seen
	e := Explanation{Job: j.ID, ExitCode: j.ExitCode, Action: ActionNone, Tier: v.tier}
	secs := func(d time.Duration) *int64 {
		s := int64(max(d, 0) / time.Second)
		return &s
	}
	if next != nil {
		t := next.UTC()
		e.NextPassAt, e.NextPassInS = &t, secs(t.Sub(c.now))
	}
	if sg.runningOK {
		e.MaxRunningLeftS = secs(cfg.MaxRunning() - sg.runningAge)
	}

	// The processes.
	foreign := ""
	if !sg.judgeable && v.err == nil {
		foreign = foreignWhere(j.Monitor)
	}
	byName := map[string]procSeen{}
	for _, p := range sg.procs {
		byName[p.name] = p
	}
	view := func(name string, id procid.Identity) Process {
		p := Process{PID: id.PID}
		ps, ok := byName[name]
		switch {
		case foreign != "":
			p.State, p.Detail = ProcForeign, foreign
		case v.err != nil && !ok:
			p.State, p.Detail = ProcUnknown, v.err.Error()
		case !ok:
			p.State = ProcUnchecked
		case ps.err != nil:
			p.State, p.Detail = ProcUnknown, ps.err.Error()
		case ps.live == procid.Alive:
			p.State = ProcAlive
		case ps.live == procid.Dead:
			p.State = ProcDead
			if !ps.group {
				if s, err := procid.ReadStat(id.PID); err == nil && s.StartTime == id.StartTime && s.State == 'Z' {
					p.State, p.Detail = ProcZombie, "exited, not yet reaped by its parent"
				}
			}
		default:
			p.State = ProcUnknown
		}
		if name != "monitor" {
			g := fmt.Sprintf("process group %d", id.PID)
			if p.Detail == "" {
				p.Detail = g
			} else {
				p.Detail = g + ": " + p.Detail
			}
		}
		return p
	}
	e.Monitor = view("monitor", j.Monitor)
	seen := []string{"monitor " + e.Monitor.State}
	if !j.Command.IsZero() {
		p := view("command", j.Command)
		e.Command = &p
		seen = append(seen, "command "+p.State)
	} else {
		seen = append(seen, "command not started")
	}
	if !j.Finalizer.IsZero() {
		p := view("finalize step", j.Finalizer)
		e.FinalizeStep = &p
		seen = append(seen, "finalize step "+p.State)
	}
	e.Seen = strings.Join(seen, ", ")
	if foreign != "" {
		e.Seen = "processes " + foreign
	}

	if sg.streakOK {
		next := cfg.Interval() - sg.streakSince
		if sg.counted {
			next = cfg.Interval()
		}
		e.DeadStreak = &DeadStreak{Count: sg.streak.Count, Of: cfg.DeadTicks, NextObservationInS: *secs(next)}
	}

	switch {
	case v.tier == TierAdopt:
		e.Action, e.Why = ActionAdopt, "its monitor is dead and its outcome can still be had ("+v.why+"): a pass starts a new monitor for it"
	case v.tier != "":
		e.Action, e.Why = ActionReap, v.why
	case v.err != nil:
		e.Why = "cannot judge it here: " + v.err.Error()
	case foreign != "":
		e.Why = "its processes run " + foreign + ": only max_running judges it"
	case j.ExitCode != nil:
		what := sg.progressOf
		switch {
		case sg.progressOK:
			left := cfg.FinalizeGrace() - sg.progressAge
			e.FinalizeGraceLeftS = secs(left)
			e.Why = fmt.Sprintf("exit code %d recorded and a process alive: reaped if no progress %s (%s since %s, finalize_grace_s = %d)",
				*j.ExitCode, "in "+short(left), short(sg.progressAge), what, cfg.FinalizeGraceS)
		default:
			e.Why = fmt.Sprintf("exit code %d recorded and a process alive: the stamp of %s lies in the future (the clock moved), so finalize_grace_s counts from the first pass that saw it", *j.ExitCode, what)
		}
	case !sg.dead:
		alive, state := "a process", "alive"
		for _, p := range sg.procs {
			if p.err != nil || p.live != procid.Dead {
				alive = p.name
				if p.err != nil || p.live != procid.Alive {
					state = "not confirmed dead"
				}
				break
			}
		}
		e.Why = "not reaped: " + alive + " " + state + " (tier 1 waits until every process is dead)"
		if alive != "monitor" && e.Monitor.State != ProcAlive {
			e.Why += "; its monitor is dead: the command's exit-status recorder keeps its outcome, and a reaper pass, watch or dispatch starts a new monitor for it"
		}
	case v.note != "":
		e.Action = ActionObserve
		e.Why = fmt.Sprintf("every process dead: observation %d of %d", sg.streak.Count, cfg.DeadTicks)
	default:
		e.Why = fmt.Sprintf("every process dead: %d of %d observations, the next counted in %s", sg.streak.Count, cfg.DeadTicks, short(time.Duration(e.DeadStreak.NextObservationInS)*time.Second))
	}
	return e
}

// foreignWhere says where id runs when it is not judged here.
func foreignWhere(id procid.Identity) string {
	host, _ := procid.Host()
	boot, _ := procid.BootID()
	switch {
	case id.Host != host:
		return "on host " + id.Host
	case id.BootID != boot:
		return "on another boot of this host"
	default:
		return "in another pid namespace"
	}
}

// short is a duration for a person: whole seconds, "28s", "4m10s".
func short(d time.Duration) string {
	return max(d, 0).Truncate(time.Second).String()
}

// String is the explanation on one line, control characters escaped:
// what the pass sees, what it does and why, the time to max_running and
// to the next pass.
func (e Explanation) String() string {
	s := e.Seen + " — "
	switch {
	case e.Outcome != "":
		s += e.Outcome + ": " + e.Why
	case e.Action == ActionReap:
		s += "a pass now would end it (" + e.Tier + "): " + e.Why
	case e.Action == ActionObserve:
		s += "a pass now would count it: " + e.Why
	default:
		s += e.Why
	}
	if e.MaxRunningLeftS != nil && e.Tier != TierMaxRunning {
		s += "; max_running in " + short(time.Duration(*e.MaxRunningLeftS)*time.Second)
	}
	switch {
	case e.NextPassInS == nil:
		s += "; no reaper pass has run yet"
	case *e.NextPassInS == 0:
		s += "; next pass due now"
	default:
		s += "; next pass due in " + short(time.Duration(*e.NextPassInS)*time.Second)
	}
	return termtext.Line(s)
}
