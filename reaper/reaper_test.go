package reaper_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ---- tier 1: dead processes, no exit code ----

// A job all of whose processes are confirmed dead is observed on dead_ticks
// consecutive passes before it is failed (reason lost, ended_by
// reaper:dead). Dead means: exited and reaped, a pid now held by another
// process (another start time), or a zombie.
func TestTier1ReapsAfterDeadTicks(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(t *testing.T, j *gitstate.Job)
	}{
		{"monitor and command exited", func(t *testing.T, j *gitstate.Job) {
			j.Monitor, j.Command = deadProc(t), deadProc(t)
			j.PGID = j.Command.PID
		}},
		{"monitor pid reused by a live process", func(t *testing.T, j *gitstate.Job) {
			// The pid is held by a live process of ours, but it is not
			// the process that was recorded: another start time.
			j.Monitor = liveProc(t)
			j.Monitor.StartTime++
		}},
		{"monitor and command zombies", func(t *testing.T, j *gitstate.Job) {
			j.Monitor, j.Command = zombieProc(t), zombieProc(t)
			j.PGID = j.Command.PID
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			j := f.running("dead", "build", func(j *gitstate.Job) { tc.set(t, j) })
			for i := 1; i <= 3; i++ {
				snap := f.pass(time.Duration(i) * time.Second)
				got := f.get(j.ID)
				if snap.Scanned != 1 || snap.Observed != 1 || len(snap.Errors) != 0 {
					t.Fatalf("pass %d: scanned %d, observed %d, errors %v; want 1, 1, none", i, snap.Scanned, snap.Observed, snap.Errors)
				}
				if i < 3 {
					if got.Status != gitstate.Running || snap.Tier1 != 0 {
						t.Fatalf("pass %d: %s, tier1 %d; want still running after %d of 3 observations", i, got.Status, snap.Tier1, i)
					}
					if st := f.state(); st.Streaks[j.ID].Count != i {
						t.Fatalf("pass %d: streak %+v, want count %d", i, st.Streaks[j.ID], i)
					}
					continue
				}
				if got.Status != gitstate.Failed || got.Reason != reaper.ReasonLost || got.EndedBy != gitstate.EndedByReaperDead ||
					got.ExitCode != nil || got.NextJob != "" || got.EndedAt.IsZero() {
					t.Fatalf("pass 3: %s %q ended_by %q exit %v next %q; want failed lost by reaper:dead", got.Status, got.Reason, got.EndedBy, got.ExitCode, got.NextJob)
				}
				if snap.Tier1 != 1 || len(actionsOf(snap, reaper.TierDead)) != 1 {
					t.Fatalf("pass 3: tier1 %d, actions %+v", snap.Tier1, snap.Actions)
				}
			}
			if got := eventsOf(f.events(), j.ID); !slices.Equal(got, []string{">queued", "queued>running", "running>failed"}) {
				t.Errorf("events %v", got)
			}
			// Once the job has ended, its streak is dropped.
			f.pass(4 * time.Second)
			if st := f.state(); len(st.Streaks) != 0 {
				t.Errorf("streaks after the job ended: %+v", st.Streaks)
			}
		})
	}
}

// A job with any sign of life is never reaped by tier 1, however many
// passes run, and no observation is counted.
func TestTier1LeavesLiveJobs(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(t *testing.T, j *gitstate.Job)
	}{
		{"live monitor, command not stamped", func(t *testing.T, j *gitstate.Job) {
			j.Monitor = liveProc(t)
		}},
		{"dead monitor, live command group", func(t *testing.T, j *gitstate.Job) {
			j.Monitor, j.Command = deadProc(t), liveProc(t)
			j.PGID = j.Command.PID
		}},
		{"dead monitor, command leader gone but its child alive in the group", func(t *testing.T, j *gitstate.Job) {
			cmd, leader, child := groupWithChild(t, "sleep 1000 & echo $!; exec sleep 1000")
			// Kill the leader alone and reap it: only its child is left.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			if l, _ := procid.Check(leader); l != procid.Dead {
				t.Fatalf("leader: %v, want dead", l)
			}
			l, err := procid.Check(child)
			mustLive(t, "the leader's child", l, err)
			j.Monitor, j.Command, j.PGID = deadProc(t), leader, leader.PID
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.DeadTicks = 1
			j := f.running("live", "build", func(j *gitstate.Job) { tc.set(t, j) })
			for i := 1; i <= 5; i++ {
				snap := f.pass(time.Duration(i) * time.Second)
				if snap.Scanned != 1 || snap.Observed != 0 || snap.Tier1 != 0 || len(snap.Errors) != 0 {
					t.Fatalf("pass %d: scanned %d observed %d tier1 %d errors %v; want 1 scanned, nothing observed or reaped",
						i, snap.Scanned, snap.Observed, snap.Tier1, snap.Errors)
				}
			}
			if got := f.get(j.ID); got.Status != gitstate.Running {
				t.Fatalf("status %s, want running", got.Status)
			}
			if st := f.state(); len(st.Streaks) != 0 {
				t.Errorf("streaks %+v, want none", st.Streaks)
			}
		})
	}
}

// At most one observation is counted per interval.
func TestTier1OneObservationPerInterval(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.IntervalS = 30
	j := f.running("dead", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	for _, step := range []struct {
		at       time.Duration
		observed int
		count    int
	}{
		{0, 1, 1},
		{10 * time.Second, 0, 1},
		{20 * time.Second, 0, 1},
		{31 * time.Second, 1, 2},
		{60 * time.Second, 0, 2},
	} {
		snap := f.pass(step.at)
		if snap.Observed != step.observed || snap.Tier1 != 0 {
			t.Fatalf("pass at +%s: observed %d tier1 %d; want observed %d, nothing reaped", step.at, snap.Observed, snap.Tier1, step.observed)
		}
		if c := f.state().Streaks[j.ID].Count; c != step.count {
			t.Fatalf("pass at +%s: streak %d, want %d", step.at, c, step.count)
		}
	}
	if got := f.get(j.ID); got.Status != gitstate.Running {
		t.Fatalf("status %s before the third observation", got.Status)
	}
	if snap := f.pass(62 * time.Second); snap.Tier1 != 1 {
		t.Fatalf("pass at +62s: tier1 %d, want the third observation to reap", snap.Tier1)
	}
	if got := f.get(j.ID); got.Status != gitstate.Failed || got.Reason != reaper.ReasonLost {
		t.Fatalf("%s %q, want failed lost", got.Status, got.Reason)
	}
}

// Observations must be consecutive: a sign of life between two dead passes
// starts the streak again.
func TestTier1StreakResetsOnSignOfLife(t *testing.T) {
	f := newFixture(t)
	dead := deadProc(t)
	j := f.running("flicker", "build", func(j *gitstate.Job) { j.Monitor, j.Command, j.PGID = deadProc(t), dead, dead.PID })
	f.pass(1 * time.Second)
	f.pass(2 * time.Second)
	// The record now names a live command group (as if the earlier
	// reading was stale): the job is not dead.
	live := liveProc(t)
	f.update(j.ID, func(j *gitstate.Job) { j.Command, j.PGID = live, live.PID })
	if snap := f.pass(3 * time.Second); snap.Observed != 0 || snap.Tier1 != 0 {
		t.Fatalf("pass with a live group: observed %d tier1 %d", snap.Observed, snap.Tier1)
	}
	if st := f.state(); st.Streaks[j.ID].Count != 0 {
		t.Fatalf("streak %+v after a sign of life, want reset", st.Streaks[j.ID])
	}
	f.update(j.ID, func(j *gitstate.Job) { j.Command, j.PGID = dead, dead.PID })
	for i := 4; i <= 5; i++ {
		if snap := f.pass(time.Duration(i) * time.Second); snap.Tier1 != 0 {
			t.Fatalf("pass %d: reaped on observation %d of a new streak", i, i-3)
		}
	}
	if snap := f.pass(6 * time.Second); snap.Tier1 != 1 {
		t.Fatalf("third observation of the new streak: tier1 %d", snap.Tier1)
	}
}

// ---- tier 2: exit code recorded, never finalized ----

// A live monitor is left to finalize for finalize_grace after recording the
// exit code; from then on the reaper finalizes the job itself.
func TestTier2GraceWithLiveMonitor(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.FinalizeGraceS = 300
	j := f.running("grace", "build", func(j *gitstate.Job) {
		j.Monitor, j.Command = liveProc(t), deadProc(t)
		j.PGID = j.Command.PID
		j.ExitCode, j.FinishedAt = intp(0), base.Add(-10*time.Second)
	})
	for _, at := range []time.Duration{0, 100 * time.Second, 289 * time.Second} {
		if snap := f.pass(at); snap.Tier2 != 0 || snap.Observed != 0 {
			t.Fatalf("pass at +%s (exit code %s old): tier2 %d observed %d; want left alone inside the grace", at, at+10*time.Second, snap.Tier2, snap.Observed)
		}
	}
	if got := f.get(j.ID); got.Status != gitstate.Running {
		t.Fatalf("status %s inside the grace", got.Status)
	}
	snap := f.pass(290 * time.Second) // exactly finalize_grace_s after finished_at
	got := f.get(j.ID)
	nextID := gitstate.JobID("grace", "review", 1)
	if snap.Tier2 != 1 || got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByReaperExitCode || got.Reason != "exit code 0" || got.NextJob != nextID {
		t.Fatalf("past the grace: tier2 %d, %s %q ended_by %q next %q", snap.Tier2, got.Status, got.Reason, got.EndedBy, got.NextJob)
	}
	if next := f.get(nextID); next.Status != gitstate.Queued || next.Stage != "review" || next.Branch != "grace" {
		t.Fatalf("next job %+v", next)
	}
}

func TestTier2GraceZero(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.FinalizeGraceS = 0
	j := f.running("nograce", "build", func(j *gitstate.Job) {
		j.Monitor = liveProc(t)
		j.ExitCode, j.FinishedAt = intp(0), base.Add(-10*time.Second)
	})
	if snap := f.pass(0); snap.Tier2 != 1 {
		t.Fatalf("tier2 %d, want 1", snap.Tier2)
	}
	if got := f.get(j.ID); got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByReaperExitCode {
		t.Fatalf("%s ended_by %q, want done by reaper:exit_code", got.Status, got.EndedBy)
	}
}

// With every process of the job dead, a recorded exit code is finalized at
// once, grace or not; a live finalize step keeps the job alive.
func TestTier2AllDeadReapsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name      string
		finalizer func(t *testing.T) procid.Identity
		reaped    bool
	}{
		{"no finalizer", func(*testing.T) procid.Identity { return procid.Identity{} }, true},
		{"dead finalizer", deadProc, true},
		{"live finalizer", liveProc, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.FinalizeGraceS = 300
			j := f.running("t2", "build", func(j *gitstate.Job) {
				j.Monitor, j.Command, j.Finalizer = deadProc(t), deadProc(t), tc.finalizer(t)
				j.PGID = j.Command.PID
				j.ExitCode, j.FinishedAt = intp(0), base
			})
			snap := f.pass(time.Second)
			got := f.get(j.ID)
			if !tc.reaped {
				if snap.Tier2 != 0 || got.Status != gitstate.Running {
					t.Fatalf("live finalize step: tier2 %d, %s; want left alone inside the grace", snap.Tier2, got.Status)
				}
				return
			}
			if snap.Tier2 != 1 || snap.Observed != 0 || got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByReaperExitCode {
				t.Fatalf("tier2 %d observed %d, %s ended_by %q; want done at once by reaper:exit_code", snap.Tier2, snap.Observed, got.Status, got.EndedBy)
			}
		})
	}
}

// Reaping runs the shared finalize path: gates read-only, claim, and only
// then advance.
func TestTier2Finalize(t *testing.T) {
	t.Run("exit 0, gates pass", func(t *testing.T) {
		f := newFixture(t)
		wt := f.repo.Worktree("ok", "feat/ok")
		f.repo.Commit(wt, "work", map[string]string{"work.txt": "work\n"})
		j := f.runningOn("ok", "gated", "feat/ok", func(j *gitstate.Job) {
			j.Monitor, j.ExitCode, j.FinishedAt = deadProc(t), intp(0), base
		})
		snap := f.pass(0)
		got := f.get(j.ID)
		nextID := gitstate.JobID("ok", "review", 1)
		if snap.Tier2 != 1 || got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByReaperExitCode ||
			got.Reason != "exit code 0, every gate passed" || got.NextJob != nextID {
			t.Fatalf("tier2 %d: %s %q ended_by %q next %q", snap.Tier2, got.Status, got.Reason, got.EndedBy, got.NextJob)
		}
		if len(got.Gates) != 2 || !got.Gates[0].Passed || !got.Gates[1].Passed {
			t.Errorf("gates %+v, want both recorded as passed", got.Gates)
		}
		acts := actionsOf(snap, reaper.TierExitCode)
		if len(acts) != 1 || acts[0].Job != j.ID || !strings.Contains(acts[0].Outcome, "advanced to "+nextID) {
			t.Errorf("actions %+v", snap.Actions)
		}
		all, err := f.store().All()
		if err != nil {
			t.Fatal(err)
		}
		if len(all.Jobs) != 2 || all.Jobs[1].ID != nextID || all.Jobs[1].Status != gitstate.Queued || all.Jobs[1].Branch != "feat/ok" || all.Jobs[1].Stage != "review" {
			t.Fatalf("jobs after the reap: %d, want the job and exactly one next job", len(all.Jobs))
		}
		if got := eventsOf(f.events(), nextID); !slices.Equal(got, []string{">queued"}) {
			t.Errorf("next job events %v, want one creation", got)
		}
		if _, err := os.Stat(filepath.Join(f.store().Dir(), "advance", j.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pending-advance marker left after the advance: %v", err)
		}
		// A second pass finds nothing to do.
		if snap := f.pass(time.Second); snap.Scanned != 0 || snap.Repaired != 0 || snap.Tier2 != 0 {
			t.Errorf("second pass: %+v", snap)
		}
	})
	t.Run("exit 0, gate fails", func(t *testing.T) {
		f := newFixture(t)
		f.repo.Worktree("nope", "feat/nope") // checked out, no commit beyond main
		j := f.runningOn("nope", "gated", "feat/nope", func(j *gitstate.Job) {
			j.Monitor, j.ExitCode, j.FinishedAt = deadProc(t), intp(0), base
		})
		snap := f.pass(0)
		got := f.get(j.ID)
		if snap.Tier2 != 1 || got.Status != gitstate.Failed || got.EndedBy != gitstate.EndedByReaperExitCode ||
			!strings.HasPrefix(got.Reason, "gate commits_ahead failed") || got.NextJob != "" {
			t.Fatalf("tier2 %d: %s %q ended_by %q next %q", snap.Tier2, got.Status, got.Reason, got.EndedBy, got.NextJob)
		}
		if _, err := f.store().Get(gitstate.JobID("nope", "review", 1)); !errors.Is(err, gitstate.ErrNotFound) {
			t.Errorf("next job: %v, want none", err)
		}
	})
	t.Run("exit 1", func(t *testing.T) {
		f := newFixture(t)
		j := f.running("one", "build", func(j *gitstate.Job) {
			j.Monitor, j.ExitCode, j.FinishedAt = deadProc(t), intp(1), base
		})
		snap := f.pass(0)
		got := f.get(j.ID)
		if snap.Tier2 != 1 || got.Status != gitstate.Failed || got.Reason != "exit code 1" || got.EndedBy != gitstate.EndedByReaperExitCode ||
			got.NextJob != "" || len(got.Gates) != 0 {
			t.Fatalf("tier2 %d: %s %q ended_by %q next %q gates %v", snap.Tier2, got.Status, got.Reason, got.EndedBy, got.NextJob, got.Gates)
		}
		if _, err := f.store().Get(gitstate.JobID("one", "review", 1)); !errors.Is(err, gitstate.ErrNotFound) {
			t.Errorf("next job: %v, want none", err)
		}
	})
}

// ---- tier 3: backstop ----

// A job running past max_running is failed (timeout) and its whole process
// group — the leader and a child of its own — is stopped.
func TestTier3StopsProcessGroup(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string
	}{
		{"group stops on TERM", "sleep 1000 & echo $!; exec sleep 1000"},
		// TERM is ignored by the whole group: KILL after the grace.
		{"group ignores TERM", "trap '' TERM; sleep 1000 & echo $!; exec sleep 1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.MaxRunningS = 1
			_, leader, child := groupWithChild(t, tc.script)
			monitor := liveProc(t)
			j := f.running("slow", "build", func(j *gitstate.Job) {
				j.Monitor, j.Command, j.PGID = monitor, leader, leader.PID
			})
			snap := f.pass(500*time.Millisecond, reaper.Options{StopGrace: 200 * time.Millisecond})
			if snap.Tier3 != 0 {
				t.Fatalf("reaped after 0.5s with max_running_s = 1")
			}
			l, err := procid.GroupLiveness(leader)
			mustLive(t, "group before", l, err)

			snap = f.pass(j.StartedAt.Sub(base)+2*time.Second, reaper.Options{StopGrace: 200 * time.Millisecond})
			got := f.get(j.ID)
			if snap.Tier3 != 1 || got.Status != gitstate.Failed || got.Reason != reaper.ReasonTimeout || got.EndedBy != gitstate.EndedByReaperMaxRunning {
				t.Fatalf("tier3 %d: %s %q ended_by %q; want failed timeout by reaper:max_running (errors %v)", snap.Tier3, got.Status, got.Reason, got.EndedBy, snap.Errors)
			}
			if len(snap.Errors) != 0 {
				t.Errorf("errors %v", snap.Errors)
			}
			if l, err := procid.GroupLiveness(leader); l != procid.Dead || err != nil {
				t.Errorf("process group %d after the reap: %v, %v; want every process gone", leader.PID, l, err)
			}
			if l, _ := procid.Check(child); l != procid.Dead {
				t.Errorf("the leader's child %d after the reap: %v, want dead", child.PID, l)
			}
		})
	}
}

// A job started on another host or another boot cannot be judged by its
// pids here: tiers 1 and 2 leave it alone even when its pids look dead, but
// tier 3 still applies.
func TestOtherHostOnlyTier3(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.DeadTicks = 1
	f.cfg.Reaper.FinalizeGraceS = 0
	f.cfg.Reaper.MaxRunningS = 1
	dead := deadProc(t)
	elsewhere := dead
	elsewhere.Host = "elsewhere"
	otherBoot := dead
	otherBoot.BootID = "00000000-0000-0000-0000-000000000000"
	jobs := []*gitstate.Job{
		f.running("host-t1", "build", func(j *gitstate.Job) { j.Monitor, j.Command, j.PGID = elsewhere, elsewhere, elsewhere.PID }),
		f.running("host-t2", "build", func(j *gitstate.Job) {
			j.Monitor, j.Command, j.PGID = elsewhere, elsewhere, elsewhere.PID
			j.ExitCode, j.FinishedAt = intp(0), base.Add(-time.Hour)
		}),
		f.running("boot-t1", "build", func(j *gitstate.Job) { j.Monitor = otherBoot }),
		f.running("boot-t2", "build", func(j *gitstate.Job) {
			j.Monitor, j.ExitCode, j.FinishedAt = otherBoot, intp(0), base.Add(-time.Hour)
		}),
	}
	for i := 0; i < 3; i++ {
		snap := f.pass(time.Duration(i) * 300 * time.Millisecond)
		if snap.Scanned != 4 || snap.Tier1+snap.Tier2+snap.Tier3 != 0 || snap.Observed != 0 {
			t.Fatalf("pass %d: %+v; want 4 scanned, none observed or reaped", i, snap)
		}
	}
	snap := f.pass(2 * time.Second)
	if snap.Tier3 != 4 || snap.Tier1+snap.Tier2 != 0 {
		t.Fatalf("past max_running: tier1 %d tier2 %d tier3 %d; want all 4 by tier 3 (errors %v)", snap.Tier1, snap.Tier2, snap.Tier3, snap.Errors)
	}
	for _, j := range jobs {
		if got := f.get(j.ID); got.Status != gitstate.Failed || got.Reason != reaper.ReasonTimeout || got.EndedBy != gitstate.EndedByReaperMaxRunning {
			t.Errorf("%s: %s %q ended_by %q", j.ID, got.Status, got.Reason, got.EndedBy)
		}
	}
}

// ---- dry run ----

type fakeLeases struct {
	calls   int
	dry     []bool
	targets []string
	errs    map[string]error
}

func (l *fakeLeases) ReclaimStale(ctx context.Context, dryRun bool) ([]string, map[string]error) {
	l.calls++
	l.dry = append(l.dry, dryRun)
	return l.targets, l.errs
}

// A dry run judges everything and writes nothing at all: with a job
// reapable by every tier, a lost advance and a stale lease, it reports what
// it would do and leaves every file of the state dir (names, bytes, mtimes)
// and every process as it was.
func TestDryRunWritesNothing(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.MaxRunningS = 1800
	// Tier 1, two observations of three already counted.
	t1 := f.running("t1", "build", func(j *gitstate.Job) { j.Monitor, j.Command = deadProc(t), deadProc(t) })
	f.pass(0)
	f.pass(time.Second)
	t2 := f.running("t2", "build", func(j *gitstate.Job) { j.Monitor, j.ExitCode, j.FinishedAt = deadProc(t), intp(0), base })
	f.storeNow = base.Add(-time.Hour) // started an hour ago
	group := liveProc(t)
	t3 := f.running("t3", "build", func(j *gitstate.Job) { j.Monitor, j.Command, j.PGID = liveProc(t), group, group.PID })
	f.storeNow = base
	done, nextID := f.doneWithLostAdvance("repair")
	leases := &fakeLeases{targets: []string{"main"}}

	before := treeSnapshot(t, f.store().Dir())
	snap := f.pass(2*time.Second, reaper.Options{DryRun: true, Leases: leases})
	sameTree(t, "a dry run", before, treeSnapshot(t, f.store().Dir()))

	// Observed too: the dry run's observation that would end t1 is not
	// counted.
	if !snap.DryRun || snap.Tier1+snap.Tier2+snap.Tier3 != 0 || snap.Observed != 0 || snap.Repaired != 0 || snap.LeasesReclaimed != 0 || len(snap.Errors) != 0 {
		t.Errorf("dry snapshot counts something done: %+v", snap)
	}
	want := map[string]string{t1.ID: reaper.TierDead, t2.ID: reaper.TierExitCode, t3.ID: reaper.TierMaxRunning, done.ID: reaper.TierRepair, "lease main": reaper.TierLease}
	got := map[string]string{}
	for _, a := range snap.Actions {
		key := a.Job
		if a.Lease != "" {
			key = "lease " + a.Lease
		}
		got[key] = a.Tier
		if !strings.HasPrefix(a.Outcome, "would") {
			t.Errorf("dry action %+v does not say what it would do", a)
		}
	}
	if !mapsEqual(got, want) {
		t.Errorf("dry actions %v, want %v", got, want)
	}
	if leases.calls != 1 || !leases.dry[0] {
		t.Errorf("lease reclaimer: %d calls, dry %v; want one dry call", leases.calls, leases.dry)
	}
	if l, err := procid.GroupLiveness(group); l != procid.Alive || err != nil {
		t.Errorf("a dry run stopped the process group of %s: %v, %v", t3.ID, l, err)
	}
	if _, err := f.store().Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("a dry run created the next job: %v", err)
	}

	// The same pass for real does all of it.
	snap = f.pass(2*time.Second, reaper.Options{Leases: leases, StopGrace: time.Second})
	if snap.Tier1 != 1 || snap.Tier2 != 1 || snap.Tier3 != 1 || snap.Repaired != 1 || snap.LeasesReclaimed != 1 {
		t.Errorf("real pass: %+v; want one of each", snap)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A dry run counts no tier-1 observation, so it must not report one as
// made: every action it lists says what it would do.
func TestDryRunObservationIsNotReportedAsMade(t *testing.T) {
	f := newFixture(t)
	j := f.running("fresh", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	before := treeSnapshot(t, f.store().Dir())
	snap := f.pass(0, reaper.Options{DryRun: true})
	sameTree(t, "a dry run", before, treeSnapshot(t, f.store().Dir()))
	if st := f.state(); len(st.Streaks) != 0 {
		t.Fatalf("a dry run counted a streak: %+v", st.Streaks)
	}
	acts := actionsOf(snap, reaper.TierDead)
	if len(acts) != 1 || acts[0].Job != j.ID {
		t.Fatalf("dry actions %+v, want one about %s", snap.Actions, j.ID)
	}
	if !strings.HasPrefix(acts[0].Outcome, "would") || snap.Observed != 0 {
		t.Fatalf("a dry run reports a tier-1 observation as made (outcome %q, observed %d) though it counts none; want \"would ...\" and observed 0", acts[0].Outcome, snap.Observed)
	}
}

// A dry run also leaves alone what a crash left behind: an active marker
// of an ended job and a pending-advance marker of a job that did not end
// done. (A real pass tidies both.)
func TestDryRunLeavesCrashLeftovers(t *testing.T) {
	f := newFixture(t)
	j := f.running("left", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	if _, won, err := f.store().Claim(context.Background(), j.ID, []gitstate.Status{gitstate.Running}, gitstate.Failed, "x", nil); err != nil || !won {
		t.Fatal(won, err)
	}
	for _, d := range []string{"active", "advance"} {
		if err := os.WriteFile(filepath.Join(f.store().Dir(), d, j.ID), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := treeSnapshot(t, f.store().Dir())
	snap := f.pass(0, reaper.Options{DryRun: true})
	after := treeSnapshot(t, f.store().Dir())
	if len(snap.Actions) != 0 {
		t.Errorf("actions %+v", snap.Actions)
	}
	if !mapsEqual(before, after) {
		t.Fatalf("a dry run changed the state dir (it must write nothing at all):\n%s", cmp.Diff(before, after))
	}
	// A real pass tidies the advance marker; the queue's active marker is
	// tidied by the next listing of the queue (status, dispatch): the pass
	// itself reads only running jobs.
	f.pass(0)
	if _, err := f.store().Active(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"active", "advance"} {
		if _, err := os.Stat(filepath.Join(f.store().Dir(), d, j.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a real pass and a listing left %s/%s: %v", d, j.ID, err)
		}
	}
}

// ---- kill switches and lease reclaim ----

func TestDisabledDoesNothing(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.Enabled = false
	f.cfg.Reaper.DeadTicks = 1
	j := f.running("dead", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	_, nextID := f.doneWithLostAdvance("repair")
	leases := &fakeLeases{targets: []string{"main"}}
	before := treeSnapshot(t, f.store().Dir())
	snap := f.pass(time.Hour, reaper.Options{Leases: leases})
	sameTree(t, "a disabled pass", before, treeSnapshot(t, f.store().Dir()))
	if !snap.Disabled || snap.Scanned != 0 || len(snap.Actions) != 0 || snap.Tier1+snap.Repaired+snap.LeasesReclaimed != 0 {
		t.Errorf("disabled pass: %+v", snap)
	}
	if leases.calls != 0 {
		t.Errorf("lease reclaimer called %d times by a disabled pass", leases.calls)
	}
	if got := f.get(j.ID); got.Status != gitstate.Running {
		t.Errorf("%s: %s", j.ID, got.Status)
	}
	if _, err := f.store().Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("next job: %v", err)
	}
}

func TestLeaseReclaim(t *testing.T) {
	f := newFixture(t)
	boom := errors.New("boom")
	leases := &fakeLeases{targets: []string{"main", "release"}, errs: map[string]error{"broken": boom}}
	for i := 1; i <= 2; i++ {
		snap := f.pass(time.Duration(i)*time.Second, reaper.Options{Leases: leases})
		if leases.calls != i || leases.dry[i-1] {
			t.Fatalf("pass %d: %d calls (dry %v), want one real call per pass", i, leases.calls, leases.dry)
		}
		acts := actionsOf(snap, reaper.TierLease)
		if snap.LeasesReclaimed != 2 || len(acts) != 2 || acts[0].Lease != "main" || acts[1].Lease != "release" || acts[0].Outcome != "reclaimed" {
			t.Fatalf("pass %d: leases_reclaimed %d, actions %+v", i, snap.LeasesReclaimed, snap.Actions)
		}
		if len(snap.Errors) != 1 || snap.Errors[0].Lease != "broken" || snap.Errors[0].Message != "boom" {
			t.Fatalf("pass %d: errors %+v, want the broken lease's", i, snap.Errors)
		}
	}
	if last := f.state().LastPass; last == nil || last.LeasesReclaimed != 2 || len(last.Errors) != 1 {
		t.Errorf("last pass saved: %+v", last)
	}

	f.cfg.Lease.ReclaimEnabled = false
	snap := f.pass(3*time.Second, reaper.Options{Leases: leases})
	if leases.calls != 2 || snap.LeasesReclaimed != 0 || len(actionsOf(snap, reaper.TierLease)) != 0 || len(snap.Errors) != 0 {
		t.Errorf("reclaim disabled: %d calls, %+v", leases.calls, snap)
	}
}

// ---- advance repair ----

func TestRepairLostAdvance(t *testing.T) {
	f := newFixture(t)
	done, nextID := f.doneWithLostAdvance("lost")
	// Another done job whose next job exists: nothing to repair.
	other, otherNext := f.doneWithLostAdvance("fine")
	if _, err := f.env.Advance(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	snap := f.pass(0)
	if snap.Repaired != 1 || len(snap.Errors) != 0 {
		t.Fatalf("repaired %d, errors %v; want 1", snap.Repaired, snap.Errors)
	}
	if acts := actionsOf(snap, reaper.TierRepair); len(acts) != 1 || acts[0].Job != done.ID || !strings.Contains(acts[0].Outcome, nextID) {
		t.Errorf("repair actions %+v", acts)
	}
	next := f.get(nextID)
	if next.Status != gitstate.Queued || next.Stage != "review" || next.Task != "lost" || next.Attempt != 1 {
		t.Errorf("next job %+v", next)
	}
	if _, err := os.Stat(filepath.Join(f.store().Dir(), "advance", done.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("marker left after the repair: %v", err)
	}
	if snap := f.pass(time.Second); snap.Repaired != 0 {
		t.Errorf("second pass repaired %d", snap.Repaired)
	}
	evs := f.events()
	for _, id := range []string{nextID, otherNext} {
		if got := eventsOf(evs, id); !slices.Equal(got, []string{">queued"}) {
			t.Errorf("%s: events %v, want one creation", id, got)
		}
	}
}

// ---- unreadable records and state ----

// A directory where a record should be is reported with its path and left
// in place; a running job's record that does not decode is ended failed,
// its bytes kept aside (it could otherwise never end); the pass still reaps
// the other jobs.
func TestUnreadableRecordsDoNotStopThePass(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.DeadTicks = 1
	a := f.running("a", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	bad := f.running("bad", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	z := f.running("z", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	garbage := []byte("\x00\x01 this is [not toml")
	if err := os.WriteFile(f.store().RecordPath(bad.ID), garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	dirID := gitstate.JobID("dir", "build", 1)
	for _, p := range []string{filepath.Join(f.store().Dir(), "active", dirID), filepath.Join(f.store().Dir(), "running", dirID), f.store().RecordPath(dirID)} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 2; i++ {
		snap := f.pass(time.Duration(i) * time.Second)
		paths := errorPaths(snap)
		if _, ok := paths[f.store().RecordPath(bad.ID)]; ok {
			t.Errorf("pass %d: the record that does not decode is reported, not ended: %+v", i, snap.Errors)
		}
		if _, ok := paths[f.store().RecordPath(dirID)]; !ok {
			t.Errorf("pass %d: the directory is not reported: %+v", i, snap.Errors)
		}
		if i == 1 && (snap.Tier1 != 2 || snap.Scanned != 2) {
			t.Errorf("pass 1: scanned %d tier1 %d; want both readable dead jobs reaped", snap.Scanned, snap.Tier1)
		}
		ended := 0
		for _, a := range snap.Actions {
			if a.Tier == reaper.TierUndecodable && a.Job == bad.ID {
				ended++
			}
		}
		if want := map[int]int{1: 1, 2: 0}[i]; ended != want {
			t.Errorf("pass %d: %d undecodable actions for %s, want %d: %+v", i, ended, bad.ID, want, snap.Actions)
		}
	}
	for _, j := range []*gitstate.Job{a, z, bad} {
		if got := f.get(j.ID); got.Status != gitstate.Failed {
			t.Errorf("%s: %s, want failed", j.ID, got.Status)
		}
	}
	// Ended, never lost: its bytes are kept exactly beside the new record.
	if got := f.get(bad.ID); got.EndedBy != gitstate.EndedByReaperUndecodable {
		t.Errorf("ended by %q", got.EndedBy)
	}
	if data, err := os.ReadFile(f.store().CorruptPath(bad.ID, 1)); err != nil || string(data) != string(garbage) {
		t.Errorf("the undecodable record's bytes were not kept: %v", err)
	}
	if fi, err := os.Stat(f.store().RecordPath(dirID)); err != nil || !fi.IsDir() {
		t.Errorf("the directory was removed: %v", err)
	}
	if last := f.state().LastPass; last == nil || len(errorPaths(last)) != 1 {
		t.Errorf("last pass saved without the directory's error: %+v", last)
	}
}

// An unreadable reaper state file is moved aside (kept, and reported) and
// the pass goes on with fresh streaks.
// So is one larger than statefile.MaxSizeDefault, even if it would parse.
func TestUnreadableReaperState(t *testing.T) {
	for name, garbage := range map[string][]byte{
		"not-toml": []byte("streaks = [[["),
		"huge":     []byte(strings.Repeat("# padding\n", statefile.MaxSizeDefault/10+1) + "version = 1\n"),
	} {
		t.Run(name, func(t *testing.T) { testUnreadableReaperState(t, garbage) })
	}
}

func testUnreadableReaperState(t *testing.T, garbage []byte) {
	f := newFixture(t)
	f.cfg.Reaper.DeadTicks = 1
	j := f.running("dead", "build", func(j *gitstate.Job) { j.Monitor = deadProc(t) })
	path := filepath.Join(f.store().Dir(), "reaper.toml")
	if err := os.WriteFile(path, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	snap := f.pass(0)
	if snap.Tier1 != 1 || len(snap.Errors) != 1 || !strings.Contains(snap.Errors[0].Message, "reaper.toml") {
		t.Fatalf("tier1 %d, errors %+v; want the job reaped and the state file reported", snap.Tier1, snap.Errors)
	}
	if got := f.get(j.ID); got.Status != gitstate.Failed {
		t.Fatalf("%s", got.Status)
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("moved-aside files %v, want one", aside)
	}
	if data, _ := os.ReadFile(aside[0]); string(data) != string(garbage) {
		t.Errorf("moved-aside state %q, want the original bytes", data)
	}
	if snap := f.pass(time.Second); len(snap.Errors) != 0 {
		t.Errorf("next pass: errors %+v", snap.Errors)
	}
	if last := f.state().LastPass; last == nil || !last.At.Equal(base.Add(time.Second)) {
		t.Errorf("last pass %+v", last)
	}
}
