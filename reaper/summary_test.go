package reaper_test

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/procid/procidtest"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// A pass reads each running job from the summary in its marker. Judged
// from it, every job — whatever its processes, exit code, progress and
// start, and whatever the reaper state holds for it — gets the verdict,
// the state change and the explanation its record gets.
func TestSummaryJudgedAsRecord(t *testing.T) {
	f := newFixture(t)
	f.cfg.Reaper.IntervalS, f.cfg.Reaper.DeadTicks, f.cfg.Reaper.MaxRunningS, f.cfg.Reaper.FinalizeGraceS = 30, 2, 3600, 120
	host, _ := procid.Host()
	alive := liveProc(t)
	otherBoot, otherNS := alive, alive
	otherBoot.BootID = "another-boot"
	otherNS.PidNS++
	procs := map[string]procid.Identity{"none": {}, "alive": alive, "dead": deadProc(t), "zombie": zombieProc(t),
		"foreign": {Host: "elsewhere.example", BootID: "b", PID: 42, StartTime: 7}, "other-boot": otherBoot, "other-ns": otherNS}
	if otherBoot.Host != host {
		t.Fatalf("live process on host %q, this is %q", otherBoot.Host, host)
	}
	st := &reaper.State{Streaks: map[string]reaper.Streak{}, Seen: map[string]reaper.Seen{}}
	n := 0
	for _, mon := range []string{"alive", "dead", "zombie", "foreign", "other-boot", "other-ns"} {
		for _, command := range []string{"none", "alive", "dead"} {
			for _, finalizer := range []string{"none", "alive"} {
				for _, exit := range []string{"none", "fresh", "stale", "future", "step"} {
					if finalizer != "none" && (exit == "none" || command == "none") {
						continue
					}
					n++
					// Each start with every process state over the
					// matrix (4 and the 23 combinations above are
					// coprime), not with each of them.
					started := []string{"recent", "old", "future", "boot"}[n%4]
					j := f.running(fmt.Sprintf("s%d", n), "build", func(j *gitstate.Job) {
						j.Monitor, j.Command, j.Finalizer = procs[mon], procs[command], procs[finalizer]
						j.PGID = j.Command.PID
						switch started {
						case "recent":
							j.StartedAt = base.Add(-time.Minute)
						case "old":
							j.StartedAt = base.Add(-2 * time.Hour)
						case "future":
							j.StartedAt = base.Add(time.Hour)
						case "boot":
							j.StartedAt, j.StartedBoot = base.Add(-time.Minute), bootBase-50*time.Minute
						}
						switch exit {
						case "fresh":
							j.ExitCode, j.FinishedAt = intp(0), base
						case "stale":
							j.ExitCode, j.FinishedAt = intp(2), base.Add(-100*time.Second)
						case "future":
							j.ExitCode, j.FinishedAt, j.ProgressAt = intp(1), base, base.Add(10*time.Minute)
						case "step":
							j.ExitCode, j.FinishedAt, j.FinalizeStep = intp(0), base.Add(-time.Hour), 2
							// The wall clock moved since: the boot clock says
							// 200 s ago, the wall clock 30 s.
							j.ProgressAt, j.ProgressBoot = base.Add(-30*time.Second), bootBase-200*time.Second
						}
					})
					// What earlier passes left: a streak under way for
					// some, a first sighting of a future stamp for others.
					switch n % 3 {
					case 0:
						st.Streaks[j.ID] = reaper.Streak{Count: 1, Last: base.Add(-40 * time.Second), LastBoot: bootBase - 40*time.Second, BootID: alive.BootID}
					case 1:
						st.Seen[j.ID] = reaper.Seen{Started: &reaper.Sighting{Stamp: base.Add(time.Hour), At: base.Add(-time.Minute), AtBoot: bootBase - time.Minute, BootID: alive.BootID}}
					}
				}
			}
		}
	}
	if err := reaper.SaveState(f.store().Dir(), st); err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]bool{}
	for _, d := range []time.Duration{0, 31 * time.Second, 200 * time.Second, 2 * time.Hour} {
		sum, rec, listed, err := reaper.JudgeBoth(f.store(), f.cfg.Reaper, reaper.Options{Now: clock(d), BootNow: bootClock(d)})
		if err != nil {
			t.Fatal(err)
		}
		if listed != n || len(sum) != n {
			t.Fatalf("at %v: %d listed, %d from a summary; want all %d", d, listed, len(sum), n)
		}
		for id, s := range sum {
			if diff := cmp.Diff(rec[id], s); diff != "" {
				t.Errorf("at %v, %s: judged from the summary unlike from the record (-record +summary):\n%s", d, id, diff)
			}
			verdicts[s.Explanation.Action+" "+s.Explanation.Tier] = true
		}
	}
	// The matrix reaches every verdict.
	for _, w := range []string{reaper.ActionNone + " ", reaper.ActionObserve + " ", "reap " + reaper.TierDead, "reap " + reaper.TierExitCode, "reap " + reaper.TierMaxRunning} {
		if !verdicts[w] {
			t.Errorf("no job was judged %q: the test no longer covers it", w)
		}
	}
}

// stampHelper claims running job $REAPER_TEST_JOB in $REAPER_TEST_REPO's
// store for a new monitor — itself (REAPER_TEST_MONITOR=self) or its parent
// (parent) — as an adopter does, with ORCH_CRASHPOINT armed.
func stampHelper() int {
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	s, err := gitstate.OpenStore(repo.StateDir())
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	pid := os.Getpid()
	if os.Getenv("REAPER_TEST_MONITOR") == "parent" {
		pid = os.Getppid()
	}
	mon, err := procid.Of(pid)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	if _, err := s.Update(context.Background(), os.Getenv("REAPER_TEST_JOB"), "", func(j *gitstate.Job) error {
		j.Monitor = mon
		return nil
	}); err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("stamped")
	return 0
}

// A process killed between writing a running job's record and writing the
// summary in its marker leaves a summary of the record before. Passes judge
// the job by its record all the same: a job whose record names a live
// monitor is never reaped for the dead one the stale summary names, and a
// job whose record names a dead monitor is reaped although the stale
// summary names a live one.
func TestPassStaleSummary(t *testing.T) {
	for _, c := range []struct {
		name       string
		before     func(t *testing.T) procid.Identity // the monitor the summary names
		newMonitor string                             // the one the record names: the helper ("self", killed) or the test ("parent", alive)
		wantEnded  bool
	}{
		{"record alive, summary dead", deadProc, "parent", false},
		{"record dead, summary alive", liveProc, "self", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.DeadTicks = 1
			f.store().Now = time.Now
			j := f.running("stale", "build", func(j *gitstate.Job) {
				j.Monitor = c.before(t)
				j.StartedAt = time.Now()
			})
			p := testproc.Start(t, append(f.repo.Env(), helperEnv+"=stamp", repoEnv+"="+f.repo.Dir, "REAPER_TEST_JOB="+j.ID,
				"REAPER_TEST_MONITOR="+c.newMonitor, crashpoint.EnvVar+"=store.updated"))
			p.In.Close()
			p.Cmd.Wait()
			if ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("helper: %v; want it killed at store.updated", p.Cmd.ProcessState)
			}
			rec := f.get(j.ID)
			if rec.Monitor == j.Monitor {
				t.Fatal("the helper's write did not reach the record")
			}
			listed, _, err := f.store().RunningSummarised()
			if err != nil || len(listed) != 1 || listed[0].Summarised {
				t.Errorf("listed %+v, %v; want the job, read from its record", listed, err)
			}
			for i, opts := range []reaper.Options{{Explain: true}, {}} {
				snap, err := reaper.RunOnce(context.Background(), f.env, opts)
				if err != nil {
					t.Fatal(err)
				}
				got := f.get(j.ID)
				if ended := got.Status != gitstate.Running; ended != c.wantEnded {
					t.Fatalf("pass %d: job %s (%s, %s), want ended %v; actions %+v, errors %+v", i, got.Status, got.Reason, got.EndedBy, c.wantEnded, snap.Actions, snap.Errors)
				}
				if c.wantEnded {
					if got.Status != gitstate.Failed || got.Reason != reaper.ReasonLost || got.EndedBy != gitstate.EndedByReaperDead {
						t.Fatalf("ended %s (%s) by %s, want failed (lost) by %s", got.Status, got.Reason, got.EndedBy, gitstate.EndedByReaperDead)
					}
					break
				}
				if snap.Observed != 0 || len(snap.Actions) != 0 {
					t.Fatalf("pass %d over a job with a live monitor: observed %d, actions %+v", i, snap.Observed, snap.Actions)
				}
				if s, ok := f.state().Streaks[j.ID]; ok {
					t.Fatalf("pass %d counted a dead streak %+v for a job whose monitor lives", i, s)
				}
			}
		})
	}
}

// Passes keep each live monitor's /proc stat file and each current marker
// open for the next pass. A monitor that dies between two passes, killed
// and reaped or left a zombie, is seen dead by the next pass all the same,
// which counts the observation from the record and reaps the job.
func TestPassSeesMonitorDieBetweenPasses(t *testing.T) {
	for _, reap := range []bool{true, false} {
		t.Run(fmt.Sprintf("reaped=%v", reap), func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.DeadTicks = 1
			cmd, mon, _ := startGroup(t, "exec sleep 1000")
			j := f.running("dies", "build", func(j *gitstate.Job) { j.Monitor = mon; j.StartedAt = base })
			for i := 0; i < 2; i++ {
				if snap := f.pass(time.Duration(i) * time.Minute); snap.Observed != 0 || len(snap.Actions) != 0 {
					t.Fatalf("pass %d with the monitor alive: observed %d, actions %+v", i, snap.Observed, snap.Actions)
				}
			}
			cmd.Process.Kill()
			if reap {
				cmd.Wait()
			} else {
				procidtest.WaitExited(t, cmd.Process.Pid)
			}
			snap := f.pass(2 * time.Minute)
			got := f.get(j.ID)
			if got.Status != gitstate.Failed || got.EndedBy != gitstate.EndedByReaperDead || snap.Tier1 != 1 {
				t.Fatalf("after the monitor died: job %s by %s, tier 1 %d; want failed by %s (actions %+v, errors %+v)",
					got.Status, got.EndedBy, snap.Tier1, gitstate.EndedByReaperDead, snap.Actions, snap.Errors)
			}
		})
	}
}
