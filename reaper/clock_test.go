package reaper_test

import (
	"context"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// Time goes backwards (and jumps forwards) on real machines. These tests
// move the wall clock and CLOCK_BOOTTIME apart, as a clock set by hand, NTP
// or a restored VM does: same-boot ages follow the boot clock, a timestamp
// in the future is "the clock moved", never "wait until then", and no tier
// reaps a live job early or a dead one late.

// tick is one pass: the wall clock and the boot clock at base and bootBase
// plus these offsets; noBoot makes the boot clock unreadable.
type tick struct {
	wall, boot time.Duration
	noBoot     bool
}

func (f *fixture) passAt(tk tick) *reaper.Snapshot {
	f.t.Helper()
	o := reaper.Options{Now: clock(tk.wall), BootNow: bootClock(tk.boot)}
	if tk.noBoot {
		o.BootNow = func() (time.Duration, bool) { return 0, false }
	}
	snap, err := reaper.RunOnce(context.Background(), f.env, o)
	if err != nil {
		f.t.Fatalf("RunOnce at %+v: %v", tk, err)
	}
	for _, e := range snap.Errors {
		f.t.Errorf("pass at %+v: error %+v", tk, e)
	}
	return snap
}

// Tier 1 counts one observation per interval on the boot clock, whatever
// the wall clock does mid-streak; with no boot clock, a last observation
// in the future counts the next one instead of freezing the streak. A dead
// job is reaped on its third observation (dead_ticks = 3) in every case,
// and a live job next to it is never observed.
func TestClockTier1Streak(t *testing.T) {
	const interval = 30 * time.Second
	for _, tc := range []struct {
		name  string
		ticks []tick
		// observed[i]: whether pass i counts an observation.
		observed []bool
	}{
		{"wall clock back an hour mid-streak",
			[]tick{{0, 0, false}, {-time.Hour, interval, false}, {-time.Hour + interval, 2 * interval, false}},
			[]bool{true, true, true}},
		{"wall clock forward ten hours mid-streak",
			// The jump is no interval: the boot clock says 1 s passed.
			[]tick{{0, 0, false}, {10 * time.Hour, time.Second, false}, {10*time.Hour + time.Second, interval, false}, {10*time.Hour + interval, 2 * interval, false}},
			[]bool{true, false, true, true}},
		{"no boot clock, last observation in the future",
			[]tick{{0, 0, true}, {-time.Hour, 0, true}, {-time.Hour + interval, 0, true}},
			[]bool{true, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.IntervalS = int(interval / time.Second)
			// As a monitor claims them: with the boot clock's start stamp,
			// so that tier 3 is not fooled by the wall clock either.
			dead := f.running("dead", "build", func(j *gitstate.Job) { j.Monitor, j.StartedBoot = deadProc(t), bootBase })
			live := f.running("live", "build", func(j *gitstate.Job) { j.Monitor, j.StartedBoot = liveProc(t), bootBase })
			count := 0
			for i, tk := range tc.ticks {
				snap := f.passAt(tk)
				want := 0
				if tc.observed[i] {
					want = 1
					count++
				}
				if snap.Observed != want {
					t.Fatalf("pass %d at %+v: observed %d, want %d", i+1, tk, snap.Observed, want)
				}
				got := f.get(dead.ID)
				if count < 3 && got.Status != gitstate.Running {
					t.Fatalf("pass %d: reaped after %d observations", i+1, count)
				}
				if count == 3 && (snap.Tier1 != 1 || got.Status != gitstate.Failed || got.Reason != reaper.ReasonLost) {
					t.Fatalf("pass %d (third observation): tier1 %d, %s %q; want reaped", i+1, snap.Tier1, got.Status, got.Reason)
				}
			}
			if got := f.get(live.ID); got.Status != gitstate.Running {
				t.Errorf("live job %s", got.Status)
			}
		})
	}
}

// Tier 3 measures a local job's running time on the boot clock from the
// monitor's started_boottime: a wall clock ten hours ahead reaps nothing, a
// wall clock an hour behind delays nothing. A job whose started_at lies in
// the future and that has no usable boot stamp (another host) is measured
// from the first pass that saw it, not from started_at.
func TestClockTier3(t *testing.T) {
	t.Run("local, boot stamp", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.MaxRunningS = 60
		j := f.running("t3", "build", func(j *gitstate.Job) {
			j.Monitor, j.StartedBoot = liveProc(t), bootBase
		})
		for _, tk := range []tick{{10 * time.Hour, time.Second, false}, {-time.Hour, 59 * time.Second, false}} {
			if snap := f.passAt(tk); snap.Tier3 != 0 {
				t.Fatalf("pass at %+v: tier3 %d; the job has run %s of 60 s by the boot clock", tk, snap.Tier3, tk.boot)
			}
		}
		if snap := f.passAt(tick{-time.Hour, 61 * time.Second, false}); snap.Tier3 != 1 {
			t.Fatalf("61 s by the boot clock, wall clock an hour back: tier3 %d, want 1", snap.Tier3)
		}
		if got := f.get(j.ID); got.Status != gitstate.Failed || got.Reason != reaper.ReasonTimeout {
			t.Fatalf("%s %q, want failed timeout", got.Status, got.Reason)
		}
	})
	t.Run("boot stamp ahead of the boot clock", func(t *testing.T) {
		// Read in another time namespace: not comparable, so the wall
		// clock judges instead of the job never growing old.
		f := newFixture(t)
		f.cfg.Reaper.MaxRunningS = 60
		f.running("ns", "build", func(j *gitstate.Job) {
			j.Monitor, j.StartedBoot = liveProc(t), bootBase+10*time.Hour
		})
		if snap := f.passAt(tick{30 * time.Second, 30 * time.Second, false}); snap.Tier3 != 0 {
			t.Fatalf("30 s by the wall clock: tier3 %d", snap.Tier3)
		}
		if snap := f.passAt(tick{61 * time.Second, 61 * time.Second, false}); snap.Tier3 != 1 {
			t.Fatalf("61 s by the wall clock: tier3 %d, want 1", snap.Tier3)
		}
	})
	t.Run("started_at in the future, another host", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.MaxRunningS = 60
		f.storeNow = base.Add(time.Hour) // the claim is stamped an hour ahead
		j := f.running("ahead", "build", func(j *gitstate.Job) {
			j.Monitor = procid.Identity{Host: "elsewhere.invalid", BootID: "other-boot", PID: 42, StartTime: 1}
		})
		for _, tk := range []tick{{0, 0, false}, {30 * time.Second, 30 * time.Second, false}, {60 * time.Second, 60 * time.Second, false}} {
			if snap := f.passAt(tk); snap.Tier3 != 0 {
				t.Fatalf("pass at %+v: tier3 %d; seen running for %s of 60 s", tk, snap.Tier3, tk.wall)
			}
		}
		if snap := f.passAt(tick{61 * time.Second, 61 * time.Second, false}); snap.Tier3 != 1 {
			t.Fatalf("61 s after the first sighting: tier3 %d, want 1 (not an hour later)", snap.Tier3)
		}
		if got := f.get(j.ID); got.Status != gitstate.Failed {
			t.Fatalf("%s, want failed", got.Status)
		}
		f.passAt(tick{62 * time.Second, 62 * time.Second, false})
		if st := f.state(); len(st.Seen) != 0 {
			t.Errorf("sightings kept for an ended job: %+v", st.Seen)
		}
	})
}

// Tier 2 measures a live monitor's stall from its last progress stamp on
// the boot clock; an exit code recorded in the future is measured from its
// first sighting; a fresh progress stamp spares a job whose exit code is
// long past the grace; and a job whose processes are all dead is reaped at
// once whatever the clocks say.
func TestClockTier2(t *testing.T) {
	const grace = 300 * time.Second
	t.Run("wall clock jumps, boot stamp", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.FinalizeGraceS = int(grace / time.Second)
		j := f.running("t2", "build", func(j *gitstate.Job) {
			j.Monitor, j.StartedBoot = liveProc(t), bootBase
			j.ExitCode, j.FinishedAt, j.ProgressAt, j.ProgressBoot = intp(0), base, base, bootBase
		})
		for _, tk := range []tick{{10 * time.Hour, time.Second, false}, {-time.Hour, grace - time.Second, false}} {
			if snap := f.passAt(tk); snap.Tier2 != 0 {
				t.Fatalf("pass at %+v: tier2 %d, the monitor stamped progress %s ago by the boot clock", tk, snap.Tier2, tk.boot)
			}
		}
		if snap := f.passAt(tick{-time.Hour, grace, false}); snap.Tier2 != 1 {
			t.Fatalf("no progress for the grace by the boot clock: tier2 %d, want 1", snap.Tier2)
		}
		if got := f.get(j.ID); got.EndedBy != gitstate.EndedByReaperExitCode {
			t.Fatalf("%s ended_by %q", got.Status, got.EndedBy)
		}
	})
	t.Run("exit code recorded in the future", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.FinalizeGraceS = int(grace / time.Second)
		j := f.running("t2f", "build", func(j *gitstate.Job) {
			j.Monitor = liveProc(t)
			j.ExitCode, j.FinishedAt = intp(0), base.Add(time.Hour)
		})
		for _, tk := range []tick{{0, 0, false}, {grace - time.Second, grace - time.Second, false}} {
			if snap := f.passAt(tk); snap.Tier2 != 0 {
				t.Fatalf("pass at %+v: tier2 %d inside the grace since first seen", tk, snap.Tier2)
			}
		}
		if snap := f.passAt(tick{grace, grace, false}); snap.Tier2 != 1 {
			t.Fatalf("the grace after the first sighting: tier2 %d, want 1 (not an hour later)", snap.Tier2)
		}
		if got := f.get(j.ID); got.Status != gitstate.Done {
			t.Fatalf("%s, want done", got.Status)
		}
	})
	t.Run("fresh progress, old exit code", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.FinalizeGraceS = int(grace / time.Second)
		j := f.running("prog", "build", func(j *gitstate.Job) {
			j.Monitor = liveProc(t)
			j.ExitCode, j.FinishedAt = intp(0), base.Add(-time.Hour)
			j.FinalizeStep, j.ProgressAt = 3, base // step 3 started just now
		})
		if snap := f.passAt(tick{10 * time.Second, 10 * time.Second, false}); snap.Tier2 != 0 {
			t.Fatalf("tier2 %d: reaped a monitor that started a step 10 s ago", snap.Tier2)
		}
		if snap := f.passAt(tick{grace, grace, false}); snap.Tier2 != 1 {
			t.Fatalf("no progress for the grace: tier2 %d, want 1", snap.Tier2)
		}
		if got := f.get(j.ID); got.EndedBy != gitstate.EndedByReaperExitCode {
			t.Fatalf("%s ended_by %q", got.Status, got.EndedBy)
		}
	})
	t.Run("all dead, exit code in the future", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.Reaper.FinalizeGraceS = int(grace / time.Second)
		f.running("deadf", "build", func(j *gitstate.Job) {
			j.Monitor = deadProc(t)
			j.ExitCode, j.FinishedAt, j.ProgressAt = intp(0), base.Add(time.Hour), base.Add(time.Hour)
		})
		if snap := f.passAt(tick{-time.Hour, 0, false}); snap.Tier2 != 1 {
			t.Fatalf("tier2 %d, want the dead job reaped on the first pass", snap.Tier2)
		}
	})
}
