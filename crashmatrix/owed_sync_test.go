package crashmatrix_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// passesOnlyScenario is the crash matrix's "pipeline, passes only" cell at
// each crash point of the merge's worktree move.
var passesOnlyScenario = scenario{"passes only", runPassesOnly}

// landedAt: the crash points of the worktree move after which the target's
// ref has moved.
var landedAt = map[string]bool{
	"merge.index_locked":     false,
	"merge.worktree_updated": false,
	"merge.index_ready":      false,
	"merge.update_ref":       true,
	"merge.index_committed":  true,
}

// TestMergeCrashRecoveredByPassesAlone: a task's merge job is killed at each
// crash point of the merge's worktree move (main is checked out in the main
// worktree); then only reaper passes run, as hooks and watch make them —
// no merge re-run, no later merge into main (runPassesOnly). Fails before
// this change at every point: the pending move left for the next merge
// (with index.lock, except after merge.index_committed), and at
// merge.update_ref and merge.index_committed the job failed (lost)
// although merged.
func TestMergeCrashRecoveredByPassesAlone(t *testing.T) {
	for point := range landedAt {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			o := runPassesOnly(t, point)
			if !o.reached {
				t.Errorf("crash point %s was never reached", point)
			}
			for _, v := range o.violations {
				t.Errorf("violation: %s", v)
			}
		})
	}
}

// runPassesOnly: build runs unarmed, main moves on, the merge job's monitor
// is killed at point; then reaper passes only. After them:
//
//   - no index.lock is left in main's worktree and no pending move is on
//     record (the passes finished the owed sync, or undid the move);
//   - main's worktree index holds main's tree and its files match it, so a
//     plain git commit there records main's tree, never reverting a merge;
//   - the merge job has its true outcome: done (merged) when main contains
//     the commit its gates judged (the ref moved before the crash), failed
//     (lost) when it does not;
//   - the invariants of checkInvariants.
func runPassesOnly(t *testing.T, point string) outcome {
	repo, env := newWorld(t, matrixToml)
	const task = "feat/owed"
	var o outcome
	build, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: task, Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	if r := runHelper(t, repo, "monitor", jobEnv+"="+build.ID); r.status.ExitStatus() != 0 {
		t.Fatalf("build monitor: %v\n%s", r.status, r.out)
	}
	// main moves on, so the merge is a real merge commit whose files
	// reach main's worktree.
	oldMain := repo.Git(repo.Dir, "rev-parse", "main")
	repo.Commit(repo.Dir, "main work", map[string]string{"main.txt": "main\n"})
	mergeID := gitstate.JobID(task, "merge", 1)
	r := runHelper(t, repo, "monitor", jobEnv+"="+mergeID, armed(point))
	o.reached = r.killed()
	if j, err := env.Store.Get(mergeID); err == nil {
		waitGroupsGone(t, j)
	}
	bad := func(format string, args ...any) { o.violations = append(o.violations, fmt.Sprintf(format, args...)) }

	o.violations = append(o.violations, recoverPasses(t, env)...)

	gitDir := repo.Git(repo.Dir, "rev-parse", "--absolute-git-dir")
	if _, err := os.Lstat(filepath.Join(gitDir, "index.lock")); !errors.Is(err, os.ErrNotExist) {
		bad("index.lock left in main's worktree after the passes (%v): the owed sync was not finished", err)
	}
	if _, err := os.Lstat(filepath.Join(env.Store.Dir(), "merges", gitstate.RefFileName("main")+".toml")); !errors.Is(err, os.ErrNotExist) {
		bad("pending worktree move of main still on record after the passes (%v)", err)
	}
	if _, err := repo.TryGit(repo.Dir, "diff", "--cached", "--quiet", "main"); err != nil {
		bad("main's index does not hold main's tree after the passes: a plain git commit would revert the merge")
	}
	if st := repo.Git(repo.Dir, "status", "--porcelain", "--untracked-files=no"); st != "" {
		bad("main's worktree differs from main after the passes: %q", st)
	}

	j, err := env.Store.Get(mergeID)
	if err != nil {
		t.Fatal(err)
	}
	landed, known := landedAt[point]
	inMain := j.Merging != "" && repo.Git(repo.Dir, "rev-list", "--count", "main.."+j.Merging) == "0"
	if known && inMain != landed {
		bad("main contains the judged commit %q: %v, want %v", j.Merging, inMain, landed)
	}
	switch {
	case inMain && (j.Status != gitstate.Done || !strings.HasPrefix(j.Reason, "merged")):
		bad("merge job %s (%s); want done (merged): main contains its commit", j.Status, j.Reason)
	case !inMain && j.Status == gitstate.Done:
		bad("merge job done (%s) but main does not contain its commit %q", j.Reason, j.Merging)
	case !inMain && !j.Status.Terminal():
		bad("merge job %s after the passes; want it ended", j.Status)
	}
	if n := mergeCommits(repo, task); inMain && n != 1 {
		bad("%d merge commits in main, want 1", n)
	}
	rep := checkInvariants(repo, env, oldMain, nil)
	o.violations = append(o.violations, rep.violations...)
	o.logGaps = rep.logGaps
	return o
}
