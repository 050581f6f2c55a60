package pipeline_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// mergedToml: build commits on the task's branch and advances to merge.
const mergedToml = `target = "main"

[[stages]]
name = "build"
run = "git commit -q --allow-empty -m built"
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
`

// built runs task's build job and returns its worktree and the merge job
// it advanced to.
func built(t *testing.T, env *pipeline.Env, task string) (wt string, merge *gitstate.Job) {
	t.Helper()
	j, _, err := env.Enqueue(pipeline.Request{Branch: task})
	if err != nil {
		t.Fatal(err)
	}
	res, err := env.Run(context.Background(), j.ID, pipeline.RunOptions{})
	if err != nil || res.Job.Status != gitstate.Done || res.Next == nil {
		t.Fatalf("build %s: %v, %+v", task, err, res.Job)
	}
	wt = env.WorktreePath(task)
	if _, err := os.Stat(wt); err != nil {
		t.Fatalf("build %s made no worktree: %v", task, err)
	}
	return wt, res.Next
}

// The reaper finishing a merge job whose monitor died after the merge (exit
// code 0 recorded, never finalized) removes the task's worktree too: the
// removal is part of the shared finalize, not of the monitor.
func TestMergedWorktreeRemovedByReaper(t *testing.T) {
	repo, env := newRepo(t, mergedToml)
	ctx := context.Background()
	wt, m := built(t, env, "feat/a")
	repo.Git(repo.Dir, "merge", "-q", "--ff-only", "feat/a")
	if _, won, err := env.Store.Claim(ctx, m.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "setup", nil); err != nil || !won {
		t.Fatalf("claim %s: %v, %v", m.ID, won, err)
	}
	code := 0
	if _, err := env.Store.Update(ctx, m.ID, "", func(j *gitstate.Job) error {
		j.ExitCode, j.FinishedAt = &code, time.Now().UTC()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res, err := env.Finalize(ctx, m.ID, pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
	if err != nil || !res.Won || res.Job.Status != gitstate.Done {
		t.Fatalf("Finalize: %v, won %v, %+v", err, res.Won, res.Job)
	}
	if want := "worktree " + wt + " removed: feat/a is merged into main"; res.Worktree != want {
		t.Errorf("Result.Worktree = %q, want %q", res.Worktree, want)
	}
	if _, err := os.Stat(wt); !os.IsNotExist(err) {
		t.Errorf("worktree %s still there: %v", wt, err)
	}
	if out := repo.Git(repo.Dir, "worktree", "list"); strings.Contains(out, wt) {
		t.Errorf("git still lists the worktree:\n%s", out)
	}
	log, _ := os.ReadFile(env.Store.LogPath(m.ID))
	if !strings.Contains(string(log), "removed: feat/a is merged into main") {
		t.Errorf("the job's log does not say the worktree was removed:\n%s", log)
	}
	repo.Git(repo.Dir, "branch", "-d", "feat/a") // no longer checked out
}

// Each condition keeps the worktree, with a line that says why, and the
// worktree goes only once none holds.
func TestMergedWorktreeKept(t *testing.T) {
	repo, env := newRepo(t, mergedToml)
	ctx := context.Background()
	wt, m := built(t, env, "feat/b")
	// The test ends the task's merge itself (done, below).
	if _, _, err := env.Cancel(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	done := &gitstate.Job{ID: "feat-b.merge.1.00000000", Task: "feat/b", Stage: "merge", Branch: "feat/b", Target: "main", Attempt: 1, Status: gitstate.Done}
	kept := func(want string) {
		t.Helper()
		got := env.RemoveMergedWorktree(ctx, done)
		if !strings.HasPrefix(got, "worktree "+wt+" kept: ") || !strings.Contains(got, want) {
			t.Errorf("RemoveMergedWorktree = %q, want it kept: %s", got, want)
		}
		if _, err := os.Stat(wt); err != nil {
			t.Fatalf("worktree removed: %v", err)
		}
	}

	// Not merged: the branch has a commit main lacks.
	kept("feat/b has commits that are not in main")

	// Merged, but another job of the task is queued.
	repo.Git(repo.Dir, "merge", "-q", "--ff-only", "feat/b")
	next, _, err := env.Enqueue(pipeline.Request{Branch: "feat/b", Stage: "build", Attempt: 2})
	if err != nil {
		t.Fatal(err)
	}
	kept("job " + next.ID + " of the task is queued in it")
	if _, _, err := env.Cancel(ctx, next.ID); err != nil {
		t.Fatal(err)
	}

	// Uncommitted work, staged or not.
	if err := os.WriteFile(wt+"/wip.txt", []byte("wip"), 0o644); err != nil {
		t.Fatal(err)
	}
	kept("it has uncommitted changes (wip.txt)")
	repo.Git(wt, "add", "wip.txt")
	kept("it has uncommitted changes (wip.txt)")
	repo.Git(wt, "rm", "-q", "--cached", "wip.txt")
	os.Remove(wt + "/wip.txt")

	// The setting keeps it, silently.
	env.Config.GC.KeepMergedWorktrees = true
	if got := env.RemoveMergedWorktree(ctx, done); got != "" {
		t.Errorf("with keep_merged_worktrees: %q, want nothing said", got)
	}
	if _, err := os.Stat(wt); err != nil {
		t.Fatalf("worktree removed despite keep_merged_worktrees: %v", err)
	}
	env.Config.GC.KeepMergedWorktrees = false

	// A job that is not done: nothing.
	failed := *done
	failed.Status = gitstate.Failed
	if got := env.RemoveMergedWorktree(ctx, &failed); got != "" {
		t.Errorf("for a failed job: %q", got)
	}

	if got := env.RemoveMergedWorktree(ctx, done); !strings.HasSuffix(got, " removed: feat/b is merged into main") {
		t.Errorf("RemoveMergedWorktree = %q, want removed", got)
	}
	if _, err := os.Stat(wt); !os.IsNotExist(err) {
		t.Errorf("worktree still there: %v", err)
	}
	// Again: no worktree, nothing to say.
	if got := env.RemoveMergedWorktree(ctx, done); got != "" {
		t.Errorf("second call: %q", got)
	}
}

// A branch checked out in the user's own worktree is never touched.
func TestMergedWorktreeUserCheckoutUntouched(t *testing.T) {
	repo, env := newRepo(t, mergedToml)
	own := repo.Worktree("mine", "feat/c")
	done := &gitstate.Job{ID: "feat-c.merge.1.00000000", Task: "feat/c", Stage: "merge", Branch: "feat/c", Target: "main", Attempt: 1, Status: gitstate.Done}
	if got := env.RemoveMergedWorktree(context.Background(), done); got != "" {
		t.Errorf("RemoveMergedWorktree = %q, want nothing", got)
	}
	if _, err := os.Stat(own); err != nil {
		t.Errorf("the user's worktree is gone: %v", err)
	}
}
