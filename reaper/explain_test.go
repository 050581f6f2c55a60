package reaper_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// explainAt explains every running job of the fixture at base+d.
func (f *fixture) explainAt(d time.Duration) map[string]reaper.Explanation {
	f.t.Helper()
	l, err := f.store().Running()
	if err != nil {
		f.t.Fatal(err)
	}
	es, err := reaper.Explain(f.env, f.cfg.Reaper, l.Jobs, reaper.Options{Now: clock(d), BootNow: bootClock(d)})
	if err != nil {
		f.t.Fatalf("Explain at base%+v: %v", d, err)
	}
	m := map[string]reaper.Explanation{}
	for _, e := range es {
		m[e.Job] = e
	}
	return m
}

func secs(n int64) *int64 { return &n }

// Each state a running job can be in is explained as the pass sees it: the
// liveness of each process by identity, the dead-tick streak with the time
// to its next observation, the finalize grace left, the time to
// max_running and to the next pass.
func TestExplainStates(t *testing.T) {
	const interval = 30 * time.Second
	type want struct {
		seen, action, tier string
		monitor            string // monitor state
		command            string // command state, "" for none
		streak             *reaper.DeadStreak
		graceLeft          *int64
		maxLeft            *int64
		why                string // a substring
	}
	for _, tc := range []struct {
		name   string
		set    func(t *testing.T, j *gitstate.Job)
		passes []time.Duration // passes made before the explanation
		at     time.Duration
		want   want
	}{
		{
			name: "monitor alive, command not started",
			set:  func(t *testing.T, j *gitstate.Job) { j.Monitor = liveProc(t) },
			at:   10 * time.Second,
			want: want{seen: "monitor alive, command not started", action: reaper.ActionNone, monitor: reaper.ProcAlive,
				maxLeft: secs(3600 - 10), why: "not reaped: monitor alive"},
		},
		{
			// The case: the monitor killed while the agent runs.
			name: "monitor dead, command alive",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor, j.Command = deadProc(t), liveProc(t)
				j.PGID = j.Command.PID
			},
			passes: []time.Duration{0},
			at:     12 * time.Second,
			want: want{seen: "monitor dead, command alive", action: reaper.ActionNone, monitor: reaper.ProcDead, command: reaper.ProcAlive,
				maxLeft: secs(3600 - 12), why: "not reaped: command alive"},
		},
		{
			name: "monitor and command zombies, first observation due",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor, j.Command = zombieProc(t), zombieProc(t)
				j.PGID = j.Command.PID
			},
			at: 0,
			want: want{seen: "monitor zombie, command dead", action: reaper.ActionObserve, monitor: reaper.ProcZombie, command: reaper.ProcDead,
				streak: &reaper.DeadStreak{Count: 1, Of: 2, NextObservationInS: 30}, maxLeft: secs(3600), why: "observation 1 of 2"},
		},
		{
			name: "all dead, one observation counted, the next in 28 s",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor, j.Command = deadProc(t), deadProc(t)
				j.PGID = j.Command.PID
			},
			passes: []time.Duration{0},
			at:     2 * time.Second,
			want: want{seen: "monitor dead, command dead", action: reaper.ActionNone, monitor: reaper.ProcDead, command: reaper.ProcDead,
				streak: &reaper.DeadStreak{Count: 1, Of: 2, NextObservationInS: 28}, maxLeft: secs(3600 - 2), why: "1 of 2 observations, the next counted in 28s"},
		},
		{
			name: "all dead, the last observation due: reap",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = deadProc(t)
			},
			passes: []time.Duration{0},
			at:     interval,
			want: want{seen: "monitor dead, command not started", action: reaper.ActionReap, tier: reaper.TierDead, monitor: reaper.ProcDead,
				streak: &reaper.DeadStreak{Count: 2, Of: 2, NextObservationInS: 30}, maxLeft: secs(3600 - 30), why: "monitor dead on 2 consecutive observations"},
		},
		{
			name: "exit code recorded, monitor alive, grace left",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = liveProc(t)
				j.ExitCode, j.FinishedAt = intp(0), base.Add(-100*time.Second)
			},
			at: 0,
			want: want{seen: "monitor alive, command not started", action: reaper.ActionNone, monitor: reaper.ProcAlive,
				graceLeft: secs(200), maxLeft: secs(3600), why: "exit code 0 recorded and a process alive: reaped if no progress in 3m20s"},
		},
		{
			name: "exit code recorded, grace past: reap",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = liveProc(t)
				j.ExitCode, j.FinishedAt = intp(0), base.Add(-301*time.Second)
			},
			at: 0,
			want: want{seen: "monitor alive, command not started", action: reaper.ActionReap, tier: reaper.TierExitCode, monitor: reaper.ProcAlive,
				maxLeft: secs(3600), why: "past finalize_grace_s = 300"},
		},
		{
			name: "past max_running",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = liveProc(t)
				j.StartedAt = base.Add(-time.Hour - time.Second)
			},
			at: 0,
			want: want{seen: "monitor alive, command not started", action: reaper.ActionReap, tier: reaper.TierMaxRunning, monitor: reaper.ProcAlive,
				maxLeft: secs(0), why: "longer than max_running_s = 3600"},
		},
		{
			name: "another host",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = procid.Identity{Host: "elsewhere.example", BootID: "b", PID: 42, StartTime: 7}
			},
			at: 60 * time.Second,
			want: want{seen: "processes on host elsewhere.example", action: reaper.ActionNone, monitor: reaper.ProcForeign,
				maxLeft: secs(3600 - 60), why: "only max_running judges it"},
		},
		{
			name: "another boot of this host",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = liveProc(t)
				j.Monitor.BootID = "an-earlier-boot"
			},
			at: 0,
			want: want{seen: "processes on another boot of this host", action: reaper.ActionNone, monitor: reaper.ProcForeign,
				maxLeft: secs(3600), why: "only max_running judges it"},
		},
		{
			name: "another pid namespace",
			set: func(t *testing.T, j *gitstate.Job) {
				j.Monitor = liveProc(t)
				ns, err := procid.PidNS()
				if err != nil {
					t.Skipf("pid namespace unreadable here: %v", err)
				}
				j.Monitor.PidNS = ns + 1
			},
			at: 0,
			want: want{seen: "processes in another pid namespace", action: reaper.ActionNone, monitor: reaper.ProcForeign,
				maxLeft: secs(3600), why: "only max_running judges it"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.IntervalS, f.cfg.Reaper.DeadTicks, f.cfg.Reaper.MaxRunningS = 30, 2, 3600
			j := f.running("ex", "build", func(j *gitstate.Job) { tc.set(t, j) })
			var last time.Duration
			for _, d := range tc.passes {
				f.pass(d)
				last = d
			}
			before := treeSnapshot(t, f.store().Dir())
			e, ok := f.explainAt(tc.at)[j.ID]
			sameTree(t, "Explain", before, treeSnapshot(t, f.store().Dir()))
			if !ok {
				t.Fatalf("no explanation of %s", j.ID)
			}
			w := tc.want
			got := want{seen: e.Seen, action: e.Action, tier: e.Tier, monitor: e.Monitor.State, streak: e.DeadStreak,
				graceLeft: e.FinalizeGraceLeftS, maxLeft: e.MaxRunningLeftS, why: w.why}
			if e.Command != nil {
				got.command = e.Command.State
				if e.Command.PID != j.Command.PID {
					t.Errorf("command pid %d, want %d", e.Command.PID, j.Command.PID)
				}
			}
			if diff := cmp.Diff(w, got, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("explanation (-want +got):\n%s\n%+v", diff, e)
			}
			if !strings.Contains(e.Why, w.why) {
				t.Errorf("why %q, want it to say %q", e.Why, w.why)
			}
			if e.Monitor.PID != j.Monitor.PID {
				t.Errorf("monitor pid %d, want %d", e.Monitor.PID, j.Monitor.PID)
			}
			// The next pass: due an interval after the last one, or not
			// known before the first.
			switch {
			case len(tc.passes) == 0 && e.NextPassInS != nil:
				t.Errorf("next pass in %d s before any pass ran", *e.NextPassInS)
			case len(tc.passes) > 0:
				wantIn := max(last+interval-tc.at, 0) / time.Second
				if e.NextPassInS == nil || *e.NextPassInS != int64(wantIn) || !e.NextPassAt.Equal(base.Add(last+interval)) {
					t.Errorf("next pass %v in %v, want at %v in %d s", e.NextPassAt, e.NextPassInS, base.Add(last+interval), wantIn)
				}
			}
			if t.Failed() {
				return
			}
			t.Logf("%s", e)
		})
	}
}

// Explain predicts exactly what a pass made at the same instant does, for
// every combination of process states, exit code, progress and age the
// tiers tell apart, over passes that move through intervals, graces and
// max_running: the same action and tier, and the pass's own report of the
// job (Snapshot.Running) is the same explanation.
func TestExplainAgreesWithPass(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.IntervalS, f.cfg.Reaper.DeadTicks, f.cfg.Reaper.MaxRunningS, f.cfg.Reaper.FinalizeGraceS = 30, 2, 3600, 120
	procs := map[string]procid.Identity{"dead": deadProc(t), "zombie": zombieProc(t), "none": {},
		"foreign": {Host: "elsewhere.example", BootID: "b", PID: 42, StartTime: 7}}
	n := 0
	for _, mon := range []string{"alive", "dead", "zombie", "foreign"} {
		for _, cmdState := range []string{"none", "alive", "dead"} {
			for _, exit := range []string{"none", "fresh", "stale"} {
				for _, started := range []time.Duration{0, 3600*time.Second - 40*time.Second} {
					n++
					// A job that max_running or the grace ends has its
					// process groups stopped: each gets live processes of
					// its own.
					own := func(state string) procid.Identity {
						if state == "alive" {
							return liveProc(t)
						}
						return procs[state]
					}
					f.running(fmt.Sprintf("c%d-%s-%s-%s", n, mon, cmdState, exit), "build", func(j *gitstate.Job) {
						j.Monitor, j.Command = own(mon), own(cmdState)
						j.PGID = j.Command.PID
						j.StartedAt = base.Add(-started)
						switch exit {
						case "fresh":
							j.ExitCode, j.FinishedAt = intp(1), base
						case "stale":
							j.ExitCode, j.FinishedAt = intp(1), base.Add(-100*time.Second)
						}
					})
				}
			}
		}
	}
	seen := map[string]bool{}
	for _, d := range []time.Duration{0, 5 * time.Second, 25 * time.Second, 31 * time.Second, 45 * time.Second, 62 * time.Second, 130 * time.Second} {
		predicted := f.explainAt(d)
		snap := f.pass(d, reaper.Options{Explain: true})
		if len(predicted) != snap.Scanned || len(snap.Running) != snap.Scanned {
			t.Fatalf("pass at %v: %d explained, %d scanned, %d reported", d, len(predicted), snap.Scanned, len(snap.Running))
		}
		did := map[string]string{}
		for _, a := range snap.Actions {
			switch {
			case a.Job == "":
			case a.Observation:
				did[a.Job] = reaper.ActionObserve
			default:
				did[a.Job] = reaper.ActionReap + " " + a.Tier
			}
		}
		for _, r := range snap.Running {
			p, ok := predicted[r.Job]
			if !ok {
				t.Fatalf("pass at %v judged %s, which Explain did not", d, r.Job)
			}
			want := p.Action
			if p.Action == reaper.ActionReap {
				want += " " + p.Tier
			}
			got, ok := did[r.Job]
			if !ok {
				got = reaper.ActionNone
			}
			if got != want {
				t.Errorf("pass at %v, %s: Explain predicted %q (%s), the pass did %q (%s)", d, r.Job, want, p, got, r)
			}
			if status := f.get(r.Job).Status; (status == gitstate.Running) != (p.Action != reaper.ActionReap) {
				t.Errorf("pass at %v, %s: predicted %q, the job is %s", d, r.Job, want, status)
			}
			if diff := cmp.Diff(p, r, cmpopts.IgnoreFields(reaper.Explanation{}, "Outcome", "NextPassAt", "NextPassInS")); diff != "" {
				t.Errorf("pass at %v, %s: Explain and the pass's report differ (-Explain +pass):\n%s", d, r.Job, diff)
			}
			if r.Outcome == "" {
				t.Errorf("pass at %v, %s: no outcome in the pass's report", d, r.Job)
			}
			seen[want] = true
		}
	}
	// The combinations reached every action of every tier.
	for _, w := range []string{reaper.ActionNone, reaper.ActionObserve, "reap " + reaper.TierDead, "reap " + reaper.TierExitCode, "reap " + reaper.TierMaxRunning} {
		if !seen[w] {
			t.Errorf("no job was predicted to %q: the test no longer covers it", w)
		}
	}
}

// A pass asked to explain reports, for a job whose monitor was killed
// while its command runs, that it saw the monitor dead and the command
// alive and left the job running, where the counters alone say nothing
// (0 observed).
func TestPassReportsWhatItSaw(t *testing.T) {
	f := newFixture(t)
	j := f.running("adopt", "build", func(j *gitstate.Job) {
		j.Monitor, j.Command = deadProc(t), liveProc(t)
		j.PGID = j.Command.PID
	})
	snap := f.pass(0, reaper.Options{Explain: true})
	if snap.Observed != 0 || len(snap.Running) != 1 {
		t.Fatalf("observed %d, running %+v", snap.Observed, snap.Running)
	}
	r := snap.Running[0]
	if r.Job != j.ID || r.Seen != "monitor dead, command alive" || r.Outcome != "left running" || r.DeadStreak != nil {
		t.Fatalf("report %+v", r)
	}
	// Without Explain, a pass reports nothing per job (the hooks' pass
	// stays as cheap as before).
	if snap := f.pass(time.Second); snap.Running != nil {
		t.Fatalf("running reported without Explain: %+v", snap.Running)
	}
}

// With the reaper off, Explain says so and a pass does nothing: no job is
// predicted to end.
func TestExplainDisabled(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.Enabled = false
	j := f.running("off", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	e := f.explainAt(time.Hour)[j.ID]
	if e.Action != reaper.ActionNone || !strings.Contains(e.Why, "reaper disabled") {
		t.Fatalf("explanation %+v, want no action, reaper disabled", e)
	}
	if snap := f.pass(time.Hour, reaper.Options{Explain: true}); !snap.Disabled || len(snap.Actions) != 0 {
		t.Fatalf("disabled pass: %+v", snap)
	}
}
