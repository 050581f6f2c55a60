package pipeline_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// judgedToml: build commits on the task's branch and advances to a merge
// stage with gates of its own.
const judgedToml = `target = "main"

[[stages]]
name = "build"
run = "git commit -q --allow-empty -m built"
gates = ["commits_ahead"]
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
gates = ["commits_ahead", "mergeable"]
`

// waitRecord polls job id's record (bounded, with backoff) until ok holds.
// The monitor is another process: its record is the one thing it shares.
func waitRecord(t *testing.T, s *gitstate.Store, m *asyncMonitor, id string, ok func(*gitstate.Job) bool) *gitstate.Job {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	wait := 100 * time.Microsecond
	for {
		if j, err := s.Get(id); err == nil && ok(j) {
			return j
		}
		select {
		case <-m.exited:
			t.Fatalf("monitor of %s exited before its record showed what was waited for; output:\n%s", id, m.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: record not as expected after 30 s; monitor output:\n%s", id, m.output())
		}
		time.Sleep(wait)
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// A commit pushed to the branch while the merge job waits for the target's
// lease (held by this test process) is not merged unchecked: the merge
// merges only the commit its gates judged, and since the branch moved, it
// refuses and the job fails saying so. Each gate result names the commit
// and the target it judged. Fails on 7ad3c30 (the new commit was merged and
// the job ended done).
func TestMergeStageRefusesCommitNoGateSaw(t *testing.T) {
	repo, env := newRepo(t, judgedToml)
	ctx := context.Background()
	const br = "feat/judged"
	wt := repo.Worktree("judged", br)
	judged := repo.Commit(wt, "checked work", map[string]string{"checked.txt": "checked\n"})
	mainTip := repo.Git(repo.Dir, "rev-parse", "main")

	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	leases := lease.Open(env.Store.Dir())
	l, err := leases.Acquire(ctx, "main", lease.Request{Holder: "test", Owner: self, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			leases.Release(ctx, "main", l.Token)
		}
	})

	j, _, err := env.Enqueue(pipeline.Request{Task: br, Branch: br, Stage: "merge"})
	if err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, repo, env.Store, j.ID)
	// The gates have judged once the monitor records what it will merge;
	// the merge then waits for the lease this test holds.
	rec := waitRecord(t, env.Store, m, j.ID, func(j *gitstate.Job) bool { return j.Merging != "" })
	unchecked := repo.Commit(wt, "unchecked work", map[string]string{"unchecked.txt": "no gate saw this\n"})
	if err := leases.Release(ctx, "main", l.Token); err != nil {
		t.Fatal(err)
	}
	released = true
	out := m.wait(t)

	if rec.Merging != judged {
		t.Errorf("merging %s, want the tip the gates judged %s", rec.Merging, judged)
	}
	if n := repo.Git(repo.Dir, "rev-list", "--count", "main.."+unchecked); n == "0" {
		t.Errorf("main contains %s, a commit no gate judged", unchecked)
	}
	if now := repo.Git(repo.Dir, "rev-parse", "main"); now != mainTip {
		t.Errorf("main moved to %s although the branch moved after its gates; monitor output:\n%s", now, out)
	}
	got, err := env.Store.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != gitstate.Failed || !strings.Contains(got.Reason, "moved") || !strings.Contains(got.Reason, "nothing merged") {
		t.Errorf("job %s (%s); want failed, saying the branch moved and nothing was merged; monitor output:\n%s", got.Status, got.Reason, out)
	}
	if len(got.Gates) != 2 {
		t.Fatalf("gates %+v; want two results", got.Gates)
	}
	for _, g := range got.Gates {
		if !g.Passed || g.Commit != judged || g.Target != mainTip {
			t.Errorf("gate %s: passed %v, commit %q, target %q; want passed, judging %s against %s", g.Name, g.Passed, g.Commit, g.Target, judged, mainTip)
		}
	}
	checkStateOnDisk(t, env.Store)
}

// Without a commit pushed meanwhile, the same merge merges the judged
// commit, and a stage's next job records the commit its gates passed.
func TestMergeStageMergesJudgedCommit(t *testing.T) {
	repo, env := newRepo(t, judgedToml)
	const br = "feat/judged"
	repo.Worktree("judged", br)

	b, _, err := env.Enqueue(pipeline.Request{Task: br, Branch: br, Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	out := startMonitor(t, repo, env.Store, b.ID).wait(t)
	built, err := env.Store.Get(b.ID)
	if err != nil {
		t.Fatal(err)
	}
	tip := repo.Git(repo.Dir, "rev-parse", br)
	if built.Status != gitstate.Done || len(built.Gates) != 1 || built.Gates[0].Commit != tip {
		t.Fatalf("build %s (%s), gates %+v; want done with its gate judging %s; output:\n%s", built.Status, built.Reason, built.Gates, tip, out)
	}
	next, err := env.Store.Get(built.NextJob)
	if err != nil {
		t.Fatal(err)
	}
	if next.PrevCommit != tip {
		t.Errorf("next job %s: prev_commit %q, want the commit build's gates passed, %s", next.ID, next.PrevCommit, tip)
	}
	out = startMonitor(t, repo, env.Store, next.ID).wait(t)
	merged, _ := env.Store.Get(next.ID)
	if merged.Status != gitstate.Done || merged.Merging != tip {
		t.Errorf("merge %s (%s), merging %q; want done, merging %s; output:\n%s", merged.Status, merged.Reason, merged.Merging, tip, out)
	}
	if n := repo.Git(repo.Dir, "rev-list", "--count", "main.."+tip); n != "0" {
		t.Errorf("main does not contain the judged commit %s", tip)
	}
}

// A merge stage without gates of its own merges the commit the previous
// stage's gates passed (recorded in the job as prev_commit): a commit made
// on the branch after that stage ended is not merged, and the job fails
// saying the branch moved.
func TestGatelessMergeStageMergesPreviousStagesCommit(t *testing.T) {
	repo, env := newRepo(t, strings.Replace(judgedToml, `gates = ["commits_ahead", "mergeable"]`, ``, 1))
	const br = "feat/prev"
	wt := repo.Worktree("prev", br)
	b, _, err := env.Enqueue(pipeline.Request{Task: br, Branch: br, Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	out := startMonitor(t, repo, env.Store, b.ID).wait(t)
	built, _ := env.Store.Get(b.ID)
	if built.Status != gitstate.Done {
		t.Fatalf("build %s (%s); output:\n%s", built.Status, built.Reason, out)
	}
	passed := repo.Git(repo.Dir, "rev-parse", br)
	mainTip := repo.Git(repo.Dir, "rev-parse", "main")
	repo.Commit(wt, "after the gates", map[string]string{"late.txt": "late\n"})

	out = startMonitor(t, repo, env.Store, built.NextJob).wait(t)
	m, _ := env.Store.Get(built.NextJob)
	if m.PrevCommit != passed || m.Merging != passed {
		t.Errorf("prev_commit %q, merging %q; want both %s", m.PrevCommit, m.Merging, passed)
	}
	if m.Status != gitstate.Failed || !strings.Contains(m.Reason, "moved") {
		t.Errorf("merge job %s (%s); want failed, the branch moved; output:\n%s", m.Status, m.Reason, out)
	}
	if now := repo.Git(repo.Dir, "rev-parse", "main"); now != mainTip {
		t.Errorf("main moved to %s: a commit no gate judged was merged", now)
	}
}

// A gate that looks at the worktree (cmd:, clean_worktree) fails when the
// branch moved while the gates ran: it may have judged another commit than
// the one the results name. Gates judging by commit id are unaffected.
func TestWorktreeGateFailsWhenBranchMovesDuringGates(t *testing.T) {
	repo, env := newRepo(t, pipelineToml)
	const br = "feat/sneak"
	wt := repo.Worktree("sneak", br)
	before := repo.Commit(wt, "work", map[string]string{"w.txt": "w\n"})
	stage, _ := env.Config.Stage("build")
	stage.Gates = []string{"commits_ahead", "cmd:git commit -q --allow-empty -m sneaky"}
	rs := env.EvaluateGates(context.Background(), pipeline.GateInput{Stage: stage, Branch: br, Target: "main", Worktree: wt})
	if len(rs) != 2 {
		t.Fatalf("results %+v", rs)
	}
	if !rs[0].Passed || rs[0].Commit != before {
		t.Errorf("commits_ahead %+v; want passed, judging %s", rs[0], before)
	}
	if rs[1].Passed || !strings.Contains(rs[1].Detail, "moved") {
		t.Errorf("cmd gate %+v; want failed: the branch moved while it ran", rs[1])
	}
	if c := pipeline.JudgedCommit(rs); c != "" {
		t.Errorf("JudgedCommit %q with a failed gate; want none", c)
	}
}
