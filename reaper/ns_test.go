package reaper_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/procid/procidtest"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// A job whose processes were recorded in another pid namespace of this
// machine (a monitor in a container or under unshare) is foreign: tiers 1
// and 2 leave it alone however dead its pids look from here (pid 1 here is
// another process), and tier 3 fails it but signals nothing, saying so.
func TestForeignNamespaceOnlyTier3(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.DeadTicks = 1
	f.cfg.Reaper.FinalizeGraceS = 0
	f.cfg.Reaper.MaxRunningS = 1
	inside := procidtest.NamespaceInit(t)

	// The would-be victim: a live group of this namespace whose pid and
	// start time the record of the other namespace happens to share.
	victim := liveProc(t)
	collides := victim
	collides.PidNS = inside.PidNS

	t1 := f.running("ns-t1", "build", func(j *gitstate.Job) { j.Monitor, j.Command, j.PGID = inside, collides, collides.PID })
	t2 := f.running("ns-t2", "build", func(j *gitstate.Job) {
		j.Monitor, j.ExitCode, j.FinishedAt = inside, intp(0), base.Add(-time.Hour)
	})
	// Before its command is stamped the monitor alone speaks for the job.
	t3 := f.running("ns-t3", "build", func(j *gitstate.Job) { j.Monitor = inside })
	for i := 0; i < 3; i++ {
		snap := f.pass(time.Duration(i) * 300 * time.Millisecond)
		if snap.Scanned != 3 || snap.Tier1+snap.Tier2+snap.Tier3 != 0 || snap.Observed != 0 || len(snap.Errors) != 0 {
			t.Fatalf("pass %d: %+v; want 3 scanned, none observed, reaped or in error", i, snap)
		}
	}
	for _, j := range []*gitstate.Job{t1, t2, t3} {
		if got := f.get(j.ID); got.Status != gitstate.Running {
			t.Fatalf("%s: %s %q; want still running", j.ID, got.Status, got.Reason)
		}
	}

	snap := f.pass(2*time.Second, reaper.Options{StopGrace: 100 * time.Millisecond})
	if snap.Tier3 != 3 || snap.Tier1+snap.Tier2 != 0 {
		t.Fatalf("past max_running: tier1 %d tier2 %d tier3 %d; want all 3 by tier 3 (errors %v)", snap.Tier1, snap.Tier2, snap.Tier3, snap.Errors)
	}
	if got := f.get(t1.ID); got.Status != gitstate.Failed || got.Reason != reaper.ReasonTimeout {
		t.Errorf("%s: %s %q; want failed timeout", t1.ID, got.Status, got.Reason)
	}
	// Not stopped, and the snapshot says so rather than claim it was.
	if len(snap.Errors) != 1 || snap.Errors[0].Job != t1.ID || !strings.Contains(snap.Errors[0].Message, "another pid namespace") {
		t.Errorf("errors %+v; want one for %s: its group, of another pid namespace, was not stopped", snap.Errors, t1.ID)
	}
	if l, err := procid.GroupLiveness(victim); l != procid.Alive || err != nil {
		t.Fatalf("the group of this namespace sharing the foreign record's pid: %v, %v; want untouched, alive", l, err)
	}
	if st, err := procid.ReadStat(victim.PID); err != nil || st.State == 'Z' || st.StartTime != victim.StartTime {
		t.Fatalf("victim: %+v, %v; want still running", st, err)
	}
	if err := syscall.Kill(victim.PID, 0); err != nil {
		t.Fatalf("victim: %v", err)
	}
}

// cancel of a job whose command was recorded in another pid namespace
// cancels it but signals nothing here, and says its processes were not
// stopped rather than that they were.
func TestCancelSparesForeignNamespace(t *testing.T) {
	f := newFixture(t)
	inside := procidtest.NamespaceInit(t)
	victim := liveProc(t)
	collides := victim
	collides.PidNS = inside.PidNS
	j := f.running("ns-cancel", "build", func(j *gitstate.Job) { j.Monitor, j.Command, j.PGID = inside, collides, collides.PID })
	got, won, err := f.env.Cancel(context.Background(), j.ID)
	if !won || got.Status != gitstate.Cancelled {
		t.Fatalf("cancel: won %v, %+v; want cancelled", won, got)
	}
	if err == nil || !strings.Contains(err.Error(), "not stopped") || !strings.Contains(err.Error(), "another pid namespace") {
		t.Errorf("cancel error %v; want one saying the group of another pid namespace was not stopped", err)
	}
	if l, err := procid.GroupLiveness(victim); l != procid.Alive || err != nil {
		t.Fatalf("the group of this namespace sharing the foreign record's pid: %v, %v; want untouched, alive", l, err)
	}
}
