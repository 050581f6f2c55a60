package pipeline_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// runningWithExit makes job (task, stage, attempt) on branch the way a
// monitor leaves it once its command has exited: queued, claimed running by
// this process, then exit_code and finished_at recorded.
func runningWithExit(t *testing.T, s *gitstate.Store, task, stage, branch string, attempt, code int) *gitstate.Job {
	t.Helper()
	ctx := context.Background()
	j, created, err := s.Create(&gitstate.Job{ID: gitstate.JobID(task, stage, attempt), Task: task, Stage: stage,
		Branch: branch, Target: "main", Attempt: attempt, Status: gitstate.Queued})
	if err != nil || !created {
		t.Fatalf("create %s: %v, %v", task, created, err)
	}
	if _, won, err := s.Claim(ctx, j.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "setup", nil); err != nil || !won {
		t.Fatalf("claim %s: %v, %v", j.ID, won, err)
	}
	j, err = s.Update(ctx, j.ID, "", func(j *gitstate.Job) error {
		j.ExitCode, j.FinishedAt = &code, time.Now().UTC()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// raceToml: build's gate passes for a branch checked out in a worktree; a
// done build advances to review. (A cmd: gate is the cheapest real gate:
// one sh per racer per round, where commits_ahead costs three git processes.)
const raceToml = `target = "main"

[[stages]]
name = "build"
run = "true"
gates = ["cmd:true"]
next = "review"

[[stages]]
name = "review"
run = "true"
`

// Sixteen processes finalize the same running job (exit code recorded, every
// gate passing) at once, as racing reapers would: exactly one wins, exactly
// one terminal write is made, exactly one next job is created, by the
// winner, and the losers write nothing at all. Fifty rounds, each on a new
// job, with the same sixteen long-lived processes.
func TestFinalizeRace(t *testing.T) {
	const racers = 16
	rounds := 50
	if testing.Short() {
		rounds = 5
	}
	repo, env := newRepo(t, raceToml)
	s := env.Store
	repo.Worktree("race", "race")

	type racer struct {
		pid int
		in  io.WriteCloser
		out *bufio.Reader
	}
	var rs []racer
	for i := 0; i < racers; i++ {
		// On success the racers have been told to stop below; on failure
		// they are killed. Either way they are waited for.
		p := testproc.Start(t, helperEnviron(repo, "finalize"))
		p.WaitAtCleanup = true
		rs = append(rs, racer{p.Pid(), p.In, p.Out})
	}

	me := itoa(os.Getpid())
	for round := 1; round <= rounds; round++ {
		j := runningWithExit(t, s, "race", "build", "race", round, 0)
		nextID := gitstate.JobID("race", "review", round)
		// The barrier: every racer gets the id at once and races on reading it.
		for _, r := range rs {
			if _, err := io.WriteString(r.in, j.ID+"\n"); err != nil {
				t.Fatal(err)
			}
		}
		winner := -1
		for i, r := range rs {
			line, err := r.out.ReadString('\n')
			if err != nil {
				t.Fatalf("round %d racer %d: %v", round, i, err)
			}
			word, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
			switch word {
			case "won":
				if winner >= 0 {
					t.Fatalf("round %d: racers %d and %d both won", round, winner, i)
				}
				winner = i
				if rest != nextID {
					t.Errorf("round %d: the winner advanced to %q, want %s", round, rest, nextID)
				}
			case "lost":
			default:
				t.Fatalf("round %d racer %d said %q", round, i, line)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		w := itoa(rs[winner].pid)

		got, err := s.Get(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByReaperExitCode || got.NextJob != nextID ||
			got.Reason != "exit code 0, every gate passed" || len(got.Gates) != 1 || pipeline.FirstFailed(got.Gates) != nil {
			t.Fatalf("round %d: %s (%s) ended_by %q next_job %q gates %+v", round, got.Status, got.Reason, got.EndedBy, got.NextJob, got.Gates)
		}
		next, err := s.Get(nextID)
		if err != nil || next.Status != gitstate.Queued || next.Stage != "review" || next.Attempt != round {
			t.Fatalf("round %d: next job %+v, %v", round, next, err)
		}
		evs, err := s.Events()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{">queued@" + me, "queued>running@" + me, "running>done@" + w}
		if got := eventsOf(evs, j.ID); !slices.Equal(got, want) {
			t.Fatalf("round %d: events of the job %v, want %v (one terminal write, by the winner)", round, got, want)
		}
		if got := eventsOf(evs, nextID); !slices.Equal(got, []string{">queued@" + w}) {
			t.Fatalf("round %d: events of the next job %v, want one create by the winner (pid %s)", round, got, w)
		}
		for i, h := range [][]gitstate.Transition{got.History, next.History} {
			for _, tr := range h {
				if p := itoa(tr.PID); p != me && p != w {
					t.Errorf("round %d: record %d has a transition by pid %s, neither the setup nor the winner", round, i, p)
				}
			}
		}
	}
	for _, r := range rs {
		r.in.Close()
	}

	evs := checkStateOnDisk(t, s)
	done, creates := 0, 0
	for _, ev := range evs {
		switch {
		case ev.To == gitstate.Done:
			done++
		case ev.From == "" && strings.Contains(ev.Job, ".review."):
			creates++
		}
	}
	if done != rounds || creates != rounds {
		t.Errorf("%d done events and %d creates of a review job, want %d of each", done, creates, rounds)
	}
	if l, err := s.PendingAdvances(); err != nil || len(l.Jobs) != 0 {
		t.Errorf("pending advances after every winner advanced: %v, %v", l.Jobs, err)
	}
	all, _ := s.All()
	if len(all.Jobs) != 2*rounds {
		t.Errorf("%d jobs, want %d", len(all.Jobs), 2*rounds)
	}
}

// gateToml: build's gates are a check that leaves a marker file when it runs
// and commits_ahead. {{MARKER}} is replaced.
const gateToml = `target = "main"

[[stages]]
name = "build"
run = "true"
gates = ["cmd:touch '{{MARKER}}'", "commits_ahead"]
next = "review"

[[stages]]
name = "review"
run = "true"
`

func newGateRepo(t *testing.T) (env *pipeline.Env, marker string) {
	t.Helper()
	marker = filepath.Join(t.TempDir(), "gate-ran")
	repo, env := newRepo(t, strings.ReplaceAll(gateToml, "{{MARKER}}", marker))
	// The branch is checked out (so cmd: gates can run) but has no commit
	// beyond main.
	repo.Worktree("gate", "gate")
	return env, marker
}

// A job whose command exited 0 but whose gate fails ends failed, with the
// failing gate named in the reason and every gate's result recorded, and
// advances nowhere. Finalizing it again changes nothing.
func TestFinalizeFailingGate(t *testing.T) {
	env, marker := newGateRepo(t)
	ctx := context.Background()
	j := runningWithExit(t, env.Store, "gate", "build", "gate", 1, 0)
	nextID := gitstate.JobID("gate", "review", 1)

	res, err := env.Finalize(ctx, j.ID, pipeline.Ending{EndedBy: gitstate.EndedByMonitor})
	if err != nil {
		t.Fatal(err)
	}
	got := res.Job
	if !res.Won || res.Next != nil || got.Status != gitstate.Failed || got.NextJob != "" || got.EndedBy != gitstate.EndedByMonitor {
		t.Fatalf("Finalize: won=%v next=%v status %s next_job %q ended_by %q", res.Won, res.Next, got.Status, got.NextJob, got.EndedBy)
	}
	if !strings.HasPrefix(got.Reason, "gate commits_ahead failed: ") || !strings.Contains(got.Reason, "no commits beyond main") {
		t.Errorf("reason %q, want it to name the commits_ahead gate and why", got.Reason)
	}
	if len(got.Gates) != 2 || !got.Gates[0].Passed || got.Gates[1].Passed || got.Gates[1].Name != "commits_ahead" {
		t.Errorf("gates %+v, want the cmd: gate passed and commits_ahead failed", got.Gates)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the cmd: gate did not run: %v", err)
	}
	if _, err := env.Store.Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("next job %s: %v, want ErrNotFound", nextID, err)
	}
	if stored, _ := env.Store.Get(j.ID); stored.Status != gitstate.Failed || stored.Reason != got.Reason {
		t.Errorf("stored record %s %q, want what Finalize returned", stored.Status, stored.Reason)
	}
	if env.NeedsAdvance(got) {
		t.Error("NeedsAdvance = true for a failed job")
	}

	before, _ := os.ReadFile(env.Store.RecordPath(j.ID))
	again, err := env.Finalize(ctx, j.ID, pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
	if err != nil || again.Won || again.Next != nil {
		t.Errorf("second Finalize: won=%v next=%v err=%v, want a quiet loss", again.Won, again.Next, err)
	}
	if after, _ := os.ReadFile(env.Store.RecordPath(j.ID)); string(after) != string(before) {
		t.Error("second Finalize rewrote the ended record")
	}
	evs := checkStateOnDisk(t, env.Store)
	me := itoa(os.Getpid())
	if got := eventsOf(evs, j.ID); !slices.Equal(got, []string{">queued@" + me, "queued>running@" + me, "running>failed@" + me}) {
		t.Errorf("events %v", got)
	}
}

// A non-zero exit code fails the job with that code as the reason, without
// running any gate.
func TestFinalizeExitCodeSkipsGates(t *testing.T) {
	env, marker := newGateRepo(t)
	j := runningWithExit(t, env.Store, "gate", "build", "gate", 1, 3)
	res, err := env.Finalize(context.Background(), j.ID, pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
	if err != nil {
		t.Fatal(err)
	}
	got := res.Job
	if !res.Won || res.Next != nil || got.Status != gitstate.Failed || got.Reason != "exit code 3" ||
		got.NextJob != "" || got.EndedBy != gitstate.EndedByReaperExitCode {
		t.Fatalf("Finalize: won=%v next=%v %s %q next_job %q ended_by %q; want failed \"exit code 3\"",
			res.Won, res.Next, got.Status, got.Reason, got.NextJob, got.EndedBy)
	}
	if len(got.Gates) != 0 {
		t.Errorf("gates %+v recorded for a command that failed", got.Gates)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cmd: gate ran (marker: %v)", err)
	}
	if _, err := env.Store.Get(gitstate.JobID("gate", "review", 1)); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("next job: %v, want ErrNotFound", err)
	}
	checkStateOnDisk(t, env.Store)
}
