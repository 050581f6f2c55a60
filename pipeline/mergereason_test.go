package pipeline_test

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

const mergeOnlyToml = `target = "main"

[[stages]]
name = "merge"
kind = "merge"
`

// A merge stage records the merge's own cause with its exit code, so a
// reaper that finalizes the job after its monitor died there (crash point
// run.exit_recorded) gives the same reason the monitor would have — the
// conflicting path — not a guess from the exit code. Fails on the code
// before issue 14 (reason "merge exit code 3 (3: conflict, not a
// fast-forward or lease busy; ...)").
func TestMergeReasonSurvivesMonitorCrash(t *testing.T) {
	repo, env := newRepo(t, mergeOnlyToml)
	ctx := context.Background()
	const br = "feat/clash"
	repo.Commit(repo.Dir, "shared", map[string]string{"shared.txt": "base\n"})
	wt := repo.Worktree("clash", br)
	repo.Commit(wt, "branch edits", map[string]string{"shared.txt": "branch\n"})
	repo.Commit(repo.Dir, "main edits", map[string]string{"shared.txt": "main\n"})
	main := repo.Git(repo.Dir, "rev-parse", "main")

	j, _, err := env.Enqueue(pipeline.Request{Task: br, Branch: br, Stage: "merge"})
	if err != nil {
		t.Fatal(err)
	}
	run := runMonitor(t, repo, env.Store, j.ID, "run.exit_recorded")
	if !run.status.Signaled() || run.status.Signal() != syscall.SIGKILL {
		t.Fatalf("monitor: %v, want killed at run.exit_recorded; output:\n%s", run.status, run.out)
	}
	got, err := env.Store.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != gitstate.Running || got.ExitCode == nil || *got.ExitCode != pipeline.MergeExitRejected {
		t.Fatalf("after the crash: %s, exit code %v; want running with exit code 3 recorded", got.Status, got.ExitCode)
	}
	res, err := env.Finalize(ctx, j.ID, pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
	if err != nil || !res.Won {
		t.Fatalf("the reaper's finalize: won %v, %v", res.Won, err)
	}
	want := "merge refused: conflict in shared.txt (feat/clash into main)"
	if res.Job.Status != gitstate.Failed || res.Job.Reason != want {
		t.Fatalf("job %s (%s); want failed (%s)", res.Job.Status, res.Job.Reason, want)
	}
	if strings.Contains(res.Job.Reason, "exit code") {
		t.Errorf("reason %q guesses from the exit code", res.Job.Reason)
	}
	if now := repo.Git(repo.Dir, "rev-parse", "main"); now != main {
		t.Errorf("main moved to %s", now)
	}
}
