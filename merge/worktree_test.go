package merge_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/merge"
)

// DESIGN.md merge finalization step 6: there is no moment at which the
// target ref has moved while its checked-out worktree's index still holds
// the old tree. These tests hold index.lock from another process, make git
// fail or stop at each step (faultgit), and crash the merger at each step.

// indexTree is the tree the index of worktree dir holds, read from a copy
// (write-tree on the index itself would want index.lock).
func (f *fixture) indexTree(dir string) string {
	f.t.Helper()
	gd := f.g.Git(dir, "rev-parse", "--absolute-git-dir")
	data, err := os.ReadFile(filepath.Join(gd, "index"))
	if err != nil {
		f.t.Fatal(err)
	}
	tmp := filepath.Join(f.tmp, "index-copy")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		f.t.Fatal(err)
	}
	return f.gitIn(dir, []string{"GIT_INDEX_FILE=" + tmp}, "", "write-tree")
}

func (f *fixture) tree(rev string) string {
	f.t.Helper()
	return f.git("rev-parse", rev+"^{tree}")
}

// inStep fails the test unless the main worktree's index holds main's tree,
// its files match the index, no index.lock is left and no move is pending.
func (f *fixture) inStep(when string) {
	f.t.Helper()
	if got, want := f.indexTree(f.dir), f.tree("main"); got != want {
		f.t.Fatalf("%s: the worktree's index holds tree %s, main's is %s", when, got, want)
	}
	if st := f.git("status", "--porcelain", "--untracked-files=no"); st != "" {
		f.t.Fatalf("%s: the worktree's files differ from its index:\n%s", when, st)
	}
	f.noLeftovers(when)
}

func (f *fixture) noLeftovers(when string) {
	f.t.Helper()
	if _, err := os.Stat(filepath.Join(f.dir, ".git", "index.lock")); !errors.Is(err, os.ErrNotExist) {
		f.t.Fatalf("%s: index.lock left behind (%v)", when, err)
	}
	if _, err := os.Stat(filepath.Join(f.repo.StateDir(), "merges", "main.toml")); !errors.Is(err, os.ErrNotExist) {
		f.t.Fatalf("%s: pending worktree move left behind (%v)", when, err)
	}
}

// faulty returns the environment of a helper whose git goes through
// faultgit with rules, and the wrapper's state dir.
func faulty(t *testing.T, rules string) (env []string, state string) {
	t.Helper()
	dir := t.TempDir()
	path, err := faultgit.InstallSelf(dir)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"PATH=" + path, faultgit.EnvRules + "=" + rules}, filepath.Join(dir, "state")
}

// runHelper runs a merge helper to its end and returns its output line and
// whether it succeeded.
func runHelper(t *testing.T, f *fixture, branch string, env ...string) (string, bool) {
	t.Helper()
	cmd := helperCmd(f, "merge", branch, env...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), err == nil
}

// divergent makes feat/x (adds x.txt) and moves main on (m.txt), so the
// merge is a real one that changes the worktree.
func divergent(f *fixture) (branch, target string) {
	b := f.commitOn("feat/x", "main", map[string]string{"x.txt": "x\n"})
	t := f.commitMain(map[string]string{"m.txt": "m\n"})
	return b, t
}

// Another git process holds the worktree's index.lock for the whole wait:
// the merge refuses, says why, and main does not move (it used to move,
// leaving the index on the old tree for the next git commit to record).
func TestIndexLockHeldRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, tgt := divergent(f)
	lock := filepath.Join(f.dir, ".git", "index.lock")
	lf, err := os.OpenFile(lock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lf.Close()
	before := f.refs()
	start := time.Now()
	res, err := f.merge(merge.Request{Branch: "feat/x", Author: author, IndexLockWait: 300 * time.Millisecond})
	if !errors.Is(err, merge.ErrIndexLocked) {
		t.Fatalf("merge with index.lock held: %+v, %v; want ErrIndexLocked", res, err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("refused after %s, before the wait of 300ms was over", waited)
	}
	for _, want := range []string{"index.lock held by another git process in " + f.dir, "main was not moved"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if res != nil && (res.Written || res.Worktree != "") {
		t.Errorf("result claims a write: %+v", res)
	}
	if got := f.refs(); got != before || f.rev("main") != tgt {
		t.Fatalf("refs changed although the merge was refused:\n%s\nwant\n%s", got, before)
	}
	// The other process's lock is its own: still there, untouched.
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("the other process's index.lock: %v", err)
	}
	os.Remove(lock)
	f.inStep("after the refusal")
	f.leaseFree("main")
	if _, err := os.Stat(filepath.Join(f.dir, "x.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("x.txt written to the worktree of an unmoved main: %v", err)
	}
	// With the lock gone the merge goes through, worktree and all.
	res = f.mustMerge(merge.Request{Branch: "feat/x", Author: author})
	if res.Kind != merge.Merged || res.Worktree != f.dir {
		t.Fatalf("merge after the lock was released: %+v", res)
	}
	f.inStep("after the merge")
}

// The other process lets go while the merge waits: the merge goes through
// and the worktree holds the merge.
func TestIndexLockReleasedMidWait(t *testing.T) {
	f := newFixture(t)
	b, tgt := divergent(f)
	lock := filepath.Join(f.dir, ".git", "index.lock")
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waited := 0
	merge.SetIndexLockBusy(func(path string) {
		waited++
		if path != lock {
			t.Errorf("waited for %s, want %s", path, lock)
		}
		os.Remove(path) // the editor's git status ends
	})
	defer merge.SetIndexLockBusy(nil)
	res := f.mustMerge(merge.Request{Branch: "feat/x", Author: author, IndexLockWait: time.Minute})
	if waited != 1 {
		t.Fatalf("the merge found index.lock taken %d times, want 1", waited)
	}
	if res.Kind != merge.Merged || !res.Written || res.Worktree != f.dir {
		t.Fatalf("merge: %+v", res)
	}
	head := f.rev("main")
	if !f.isAncestor(b, head) || !f.isAncestor(tgt, head) {
		t.Fatal("main does not hold the merge")
	}
	f.inStep("after the merge")
}

// A plain git commit in the target's worktree while the merge is about to
// move the ref (git stopped before update-ref) fails on index.lock; after
// the merge, the worktree holds the merge.
func TestCommitDuringMergeCannotRevert(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b, _ := divergent(f)
	env, state := faulty(t, "update-ref:pause=ref")
	cmd := helperCmd(f, "merge", "feat/x", env...)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	for !faultgit.Paused(state, "ref") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("helper ended before its update-ref: %v (%s)", err, out.String())
		case <-time.After(2 * time.Millisecond): // polling the file the wrapper writes
		}
	}
	if c, err := f.g.TryGit(f.dir, "commit", "--allow-empty", "-m", "while merging"); err == nil || !strings.Contains(c, "index.lock") {
		t.Fatalf("git commit while the merge moves main: %v %q; want it refused on index.lock", err, c)
	}
	if err := faultgit.Resume(state, "ref"); err != nil {
		t.Fatal(err)
	}
	err := <-done
	done <- err
	if err != nil {
		t.Fatalf("helper: %v (%s)", err, out.String())
	}
	if !f.isAncestor(b, f.rev("main")) {
		t.Fatal("main does not hold the merge")
	}
	f.inStep("after the merge")
	// Now a commit records the merge's tree.
	f.git("commit", "-q", "--allow-empty", "-m", "after")
	if f.tree("main") != f.tree("main~1") || !f.isAncestor(b, f.rev("main")) {
		t.Fatal("the commit after the merge did not keep the merge's tree")
	}
}

// git failing at a step of the worktree move: read-tree refuses (nothing
// moves); update-ref fails (the files go back, nothing moves);
// update-ref succeeds but reports failure (the move completes).
func TestGitFailsInWorktreeMove(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rules string
		moved bool
	}{
		{"read-tree:fail", false},
		{"update-ref:fail", false},
		{"update-ref:fail-after", true},
	} {
		t.Run(tc.rules, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			b, tgt := divergent(f)
			env, _ := faulty(t, tc.rules)
			out, ok := runHelper(t, f, "feat/x", env...)
			if ok != tc.moved {
				t.Fatalf("helper with %s: %q, succeeded = %v, want %v", tc.rules, out, ok, tc.moved)
			}
			if moved := f.rev("main") != tgt; moved != tc.moved {
				t.Fatalf("with %s: main moved = %v, want %v (%s)", tc.rules, moved, tc.moved, out)
			}
			if !tc.moved {
				if !strings.Contains(out, "main was not moved") {
					t.Errorf("error %q does not say main was not moved", out)
				}
				if _, err := os.Stat(filepath.Join(f.dir, "x.txt")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("x.txt left in the worktree of an unmoved main: %v", err)
				}
			}
			f.inStep("after " + tc.rules)
			f.leaseFree("main")
			// Without the fault the merge converges on one merge commit.
			f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
			if n := f.mergeCommits("main", "feat/x"); n != 1 || !f.isAncestor(b, f.rev("main")) {
				t.Fatalf("%d merge commits of feat/x after the re-run, want 1", n)
			}
			f.inStep("after the re-run")
		})
	}
}

// A merger killed at each step of the worktree move: at no point does a
// plain git commit in the worktree record the old tree on top of the
// merge, and the next merge converges (one merge commit, the index holding
// main's tree, no lock left).
func TestCrashInWorktreeMoveConverges(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"merge.index_locked", "merge.worktree_updated", "merge.index_ready", "merge.update_ref", "merge.index_committed"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			b, tgt := divergent(f)
			runCrashing(t, f, "feat/x", point)

			moved := f.rev("main") != tgt
			if c, err := f.g.TryGit(f.dir, "commit", "--allow-empty", "-m", "after the crash"); err == nil {
				// A commit that went through must not undo the merge.
				if moved && f.tree("main") != f.tree("main~1") {
					t.Fatalf("crash at %s: a plain git commit recorded tree %s over the merge's %s", point, f.tree("main"), f.tree("main~1"))
				}
				if !moved && f.rev("main~1") != tgt {
					t.Fatalf("crash at %s: commit on an unmoved main not on the old target", point)
				}
			} else if !strings.Contains(c, "index.lock") {
				t.Fatalf("crash at %s: git commit failed for another reason: %q", point, c)
			}
			if _, errs := f.m.Leases.ReclaimStale(context.Background(), false); len(errs) != 0 {
				t.Fatal(errs)
			}
			f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
			head := f.rev("main")
			if !f.isAncestor(b, head) || !f.isAncestor(tgt, head) {
				t.Fatalf("crash at %s: main does not hold the merge after the re-run", point)
			}
			if n := f.mergeCommits("main", "feat/x"); n != 1 {
				t.Fatalf("crash at %s: %d merge commits of feat/x, want 1", point, n)
			}
			f.inStep("re-run after a crash at " + point)
			if _, err := os.Stat(filepath.Join(f.dir, "x.txt")); err != nil {
				t.Fatalf("x.txt not in the worktree after the re-run: %v", err)
			}
			f.leaseFree("main")
		})
	}
}

// The caller's fence refusing (a cancelled job): nothing moves, the files
// go back, the fence's error is returned; the fence is asked under the
// lease before the worktree is touched and again right before the write.
func TestFenceRefusesWrite(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, tgt := divergent(f)
	cancelled := errors.New("job is cancelled")
	calls := 0
	res, err := f.merge(merge.Request{Branch: "feat/x", Author: author, Fence: func(ctx context.Context, effect func() error) error {
		calls++
		if l, _ := f.m.Leases.Get("main"); l == nil {
			t.Error("fence asked without the lease held")
		}
		_, err := os.Stat(filepath.Join(f.dir, "x.txt"))
		if calls == 1 {
			// Before the worktree is touched.
			if err == nil {
				t.Error("worktree touched before the fence was asked")
			}
			return effect()
		}
		// Right before the ref moves: the worktree is ready.
		if err != nil {
			t.Errorf("fence asked before the worktree was ready: %v", err)
		}
		return cancelled
	}})
	if !errors.Is(err, cancelled) || calls != 2 {
		t.Fatalf("merge with a refusing fence: %+v, %v, %d calls", res, err, calls)
	}
	if res != nil && res.Written {
		t.Fatalf("result claims a write: %+v", res)
	}
	if f.rev("main") != tgt {
		t.Fatal("main moved past a refusing fence")
	}
	if _, err := os.Stat(filepath.Join(f.dir, "x.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("x.txt left in the worktree: %v", err)
	}
	f.inStep("after the fence refused")
	f.leaseFree("main")

	// A fence that lets the write through, without a worktree.
	g := newFixture(t)
	g.git("checkout", "-q", "--detach")
	g.commitOn("feat/y", "main", map[string]string{"y.txt": "y\n"})
	calls = 0
	res = g.mustMerge(merge.Request{Branch: "feat/y", Author: author, Fence: func(ctx context.Context, effect func() error) error {
		calls++
		return effect()
	}})
	if res.Kind != merge.FastForward || !res.Written || calls != 1 || g.rev("main") != g.rev("feat/y") {
		t.Fatalf("merge with a passing fence: %+v, %d calls", res, calls)
	}
}

// Another git process takes index.lock between the merge's look at the
// worktree and its update of it (the second read-tree of the merge, were
// there one): whatever the merge then does, the worktree's index holds
// main's tree. The merge used to move main first and fail to update the
// worktree after, leaving the old tree in the index for the next commit.
func TestIndexLockTakenAfterCheck(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b, tgt := divergent(f)
	env, _ := faulty(t, "read-tree#2:hold-index-lock")
	out, ok := runHelper(t, f, "feat/x", env...)
	if moved := f.rev("main") != tgt; moved != ok {
		t.Fatalf("helper %q: succeeded = %v but main moved = %v", out, ok, moved)
	}
	if !ok && strings.Contains(out, "updated") {
		t.Errorf("a failed merge claims an update: %q", out)
	}
	f.inStep("after the merge (" + out + ")")
	f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
	if !f.isAncestor(b, f.rev("main")) || f.mergeCommits("main", "feat/x") != 1 {
		t.Fatal("the re-run did not converge on one merge")
	}
	f.inStep("after the re-run")
}

// After a crash with main moved and index.lock holding the new index,
// someone removes the lock by hand (git's own advice for a stale lock):
// the index is the old tree, the files the new. The next merge brings the
// index to main's tree, touching no file.
func TestLockRemovedByHandAfterCrash(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b, tgt := divergent(f)
	runCrashing(t, f, "feat/x", "merge.update_ref")
	if f.rev("main") == tgt {
		t.Fatal("crash at merge.update_ref: main did not move")
	}
	if err := os.Remove(filepath.Join(f.dir, ".git", "index.lock")); err != nil {
		t.Fatalf("the crashed merge's index.lock: %v", err)
	}
	if _, errs := f.m.Leases.ReclaimStale(context.Background(), false); len(errs) != 0 {
		t.Fatal(errs)
	}
	res := f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
	if res.Kind != merge.AlreadyMerged || !f.isAncestor(b, f.rev("main")) {
		t.Fatalf("re-run: %+v", res)
	}
	f.inStep("re-run after the lock was removed by hand")
}

// After a crash with the files moved and main not, the files cannot be put
// back (read-tree fails): the next run lets go of index.lock anyway (main
// never moved, the index file was never replaced), says what happened, and
// the run after that merges once the user has looked.
func TestRollBackFailsAfterCrash(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	b, tgt := divergent(f)
	runCrashing(t, f, "feat/x", "merge.index_ready")
	if _, errs := f.m.Leases.ReclaimStale(context.Background(), false); len(errs) != 0 {
		t.Fatal(errs)
	}
	env, _ := faulty(t, "read-tree:fail")
	out, ok := runHelper(t, f, "feat/x", env...)
	if ok || !strings.Contains(out, "could not all be put back") || !strings.Contains(out, "main was not moved") {
		t.Fatalf("re-run with read-tree failing: %q, succeeded = %v", out, ok)
	}
	if f.rev("main") != tgt {
		t.Fatal("main moved")
	}
	f.noLeftovers("after the failed roll back")
	// What the stopped merge wrote: x.txt, unknown to the old index.
	if st := f.git("status", "--porcelain"); st != "?? x.txt" {
		t.Fatalf("status after the failed roll back: %q, want x.txt shown", st)
	}
	if err := os.Remove(filepath.Join(f.dir, "x.txt")); err != nil {
		t.Fatal(err)
	}
	f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
	if !f.isAncestor(b, f.rev("main")) || f.mergeCommits("main", "feat/x") != 1 {
		t.Fatal("the merge after did not land once")
	}
	f.inStep("after the merge")
}

// A pending record of the earlier version (written before its ref update,
// no lock held, no git dir) whose merger died after moving the ref: the
// index and files are still at the old tree; the next merge brings both
// along.
func TestLegacyPendingRecord(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := f.rev("main")
	b := f.commitOn("feat/y", "main", map[string]string{"y.txt": "y\n"})
	f.git("update-ref", "refs/heads/main", b, old)
	rec := "target = \"main\"\nworktree = \"" + f.dir + "\"\nfrom = \"" + old + "\"\nto = \"" + b + "\"\n"
	if err := os.MkdirAll(filepath.Join(f.repo.StateDir(), "merges"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.repo.StateDir(), "merges", "main.toml"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	res := f.mustMerge(merge.Request{Branch: "feat/y", Author: author})
	if res.Kind != merge.AlreadyMerged {
		t.Fatalf("re-run: %+v", res)
	}
	f.inStep("after the legacy record was finished")
	if _, err := os.Stat(filepath.Join(f.dir, "y.txt")); err != nil {
		t.Fatalf("y.txt not brought along: %v", err)
	}
}

// A merger killed at each step of the worktree move while the worktree has
// local changes in paths the merge does not touch (staged, unstaged,
// untracked): the recovery must not take them for a half-done move, nor
// lose them. The next merge converges, and every change is still there,
// staged ones staged. The last case removes the crashed merge's index.lock
// by hand first (recovery then rebuilds the index from the old one).
func TestCrashInWorktreeMoveKeepsLocalChanges(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"merge.index_locked", "merge.worktree_updated", "merge.index_ready", "merge.update_ref", "merge.index_committed", "merge.update_ref+lock removed"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.commitMain(map[string]string{"tracked.txt": "v1\n", "staged.txt": "s1\n"})
			b, tgt := divergent(f)
			f.localChanges()
			crashAt, removeLock := strings.CutSuffix(point, "+lock removed")
			runCrashing(t, f, "feat/x", crashAt)
			if removeLock {
				if f.rev("main") == tgt {
					t.Fatal("crash at merge.update_ref: main did not move")
				}
				if err := os.Remove(filepath.Join(f.dir, ".git", "index.lock")); err != nil {
					t.Fatalf("the crashed merge's index.lock: %v", err)
				}
			}
			if _, errs := f.m.Leases.ReclaimStale(context.Background(), false); len(errs) != 0 {
				t.Fatal(errs)
			}
			f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
			head := f.rev("main")
			if !f.isAncestor(b, head) || !f.isAncestor(tgt, head) || f.mergeCommits("main", "feat/x") != 1 {
				t.Fatalf("crash at %s: main does not hold the merge once after the re-run", point)
			}
			if got := f.readFile("x.txt"); got != "x\n" {
				t.Fatalf("crash at %s: x.txt after the re-run: %q", point, got)
			}
			f.keptLocalChanges("re-run after a crash at " + point)
			f.noLeftovers("re-run after a crash at " + point)
			f.leaseFree("main")
		})
	}
}
