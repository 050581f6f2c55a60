package merge_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
)

// A branch already contained in the target — behind it, or at its very
// tip — is already merged: success, and nothing is written. With and
// without a commit-graph file (graph questions may use it).
func TestAlreadyMerged(t *testing.T) {
	t.Parallel()
	for _, graph := range []bool{false, true} {
		t.Run(map[bool]string{false: "objects", true: "commit-graph"}[graph], func(t *testing.T) { testAlreadyMerged(t, graph) })
	}
}

func testAlreadyMerged(t *testing.T, graph bool) {
	for _, tc := range []struct {
		name  string
		setup func(f *fixture) string // returns the branch
	}{
		{"behind", func(f *fixture) string {
			f.git("branch", "old", "main")
			f.commitMain(map[string]string{"m.txt": "m\n"})
			return "old"
		}},
		{"same tip", func(f *fixture) string {
			f.commitMain(map[string]string{"m.txt": "m\n"})
			f.git("branch", "same", "main")
			return "same"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			branch := tc.setup(f)
			if graph {
				f.git("commit-graph", "write", "--reachable")
			}
			refs, log := f.refs(), f.reflog("refs/heads/main")
			tip := f.rev("main")
			res := f.mustMerge(merge.Request{Branch: branch})
			if res.Kind != merge.AlreadyMerged || res.Written || res.Commit != "" {
				t.Fatalf("result %+v, want already merged, nothing written", res)
			}
			if res.OldTarget != tip || res.NewTarget != tip || res.BranchTip != f.rev(branch) {
				t.Fatalf("result %+v, want old = new = %s", res, tip)
			}
			if diff := cmp.Diff(refs, f.refs()); diff != "" {
				t.Fatalf("refs changed (-before +after):\n%s", diff)
			}
			if got := f.reflog("refs/heads/main"); got != log {
				t.Fatalf("reflog of main changed:\n%s", got)
			}
			if st := f.status(); st != "" {
				t.Fatalf("worktree: %s", st)
			}
			f.leaseFree("main")
		})
	}
}

func TestFastForward(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := f.rev("main")
	tip := f.commitOn("feat/ff", "main", map[string]string{"ff.txt": "ff\n"})
	res := f.mustMerge(merge.Request{Branch: "feat/ff", Job: "j1"})
	if res.Kind != merge.FastForward || !res.Written || res.Commit != "" {
		t.Fatalf("result %+v, want a written fast-forward without a merge commit", res)
	}
	if res.OldTarget != old || res.NewTarget != tip || res.BranchTip != tip {
		t.Fatalf("result %+v, want %s → %s", res, old, tip)
	}
	if got := f.rev("main"); got != tip {
		t.Fatalf("main = %s, want the branch tip %s", got, tip)
	}
	// main is checked out in the main worktree: it came along.
	if got := f.rev("HEAD"); got != tip {
		t.Fatalf("HEAD = %s, want %s", got, tip)
	}
	if st := f.status(); st != "" {
		t.Fatalf("worktree after fast-forward:\n%s", st)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "ff.txt")); err != nil || string(b) != "ff\n" {
		t.Fatalf("ff.txt in the worktree: %q, %v", b, err)
	}
	if res.Worktree != f.dir {
		t.Errorf("result worktree %q, want %q", res.Worktree, f.dir)
	}
	f.leaseFree("main")
}

func TestCleanMerge(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"shared.txt": "1\n2\n3\n"})
	b := f.commitOn("feat/a", "main", map[string]string{"a.txt": "a\n", "shared.txt": "1\n2\n3 from a\n"})
	tgt := f.commitMain(map[string]string{"main.txt": "main\n", "shared.txt": "1 from main\n2\n3\n"})

	res := f.mustMerge(merge.Request{Branch: "feat/a", Job: "feat-a.merge.1.abcdef01"})
	if res.Kind != merge.Merged || !res.Written || res.Commit == "" {
		t.Fatalf("result %+v, want a written merge", res)
	}
	head := f.rev("main")
	if res.Commit != head || res.NewTarget != head || res.OldTarget != tgt || res.BranchTip != b {
		t.Fatalf("result %+v; main is %s", res, head)
	}
	if diff := cmp.Diff([]string{tgt, b}, f.parents(head)); diff != "" {
		t.Fatalf("parents of the merge commit (-want +got):\n%s", diff)
	}
	subject := f.git("log", "-1", "--format=%s", head)
	if !strings.Contains(subject, "feat/a") || !strings.Contains(subject, "main") {
		t.Errorf("subject %q does not name the branch and the target", subject)
	}
	if got := f.git("log", "-1", "--format=%(trailers:key=Orch-Job,valueonly)", head); got != "feat-a.merge.1.abcdef01" {
		t.Errorf("Orch-Job trailer %q, want the job id; message:\n%s", got, f.git("log", "-1", "--format=%B", head))
	}
	if got := f.git("show", head+":shared.txt"); got != "1 from main\n2\n3 from a" {
		t.Errorf("merged shared.txt = %q", got)
	}
	for _, p := range []string{"a.txt", "main.txt"} {
		f.git("cat-file", "-e", head+":"+p)
	}
	if f.rev("HEAD") != head || f.status() != "" {
		t.Fatalf("main worktree: HEAD %s, status %q; want %s, clean", f.rev("HEAD"), f.status(), head)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "a.txt")); err != nil || string(b) != "a\n" {
		t.Fatalf("a.txt in the worktree: %q, %v", b, err)
	}
	f.leaseFree("main")
}

// Without a job there is no Orch-Job trailer.
func TestMergeWithoutJobHasNoTrailer(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/b", "main", map[string]string{"b.txt": "b\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	res := f.mustMerge(merge.Request{Branch: "feat/b"})
	if res.Kind != merge.Merged {
		t.Fatalf("kind %s", res.Kind)
	}
	if msg := f.git("log", "-1", "--format=%B", res.Commit); strings.Contains(msg, "Orch-Job") {
		t.Fatalf("message without a job has a trailer:\n%s", msg)
	}
}

func TestConflict(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"a.txt": "base\n", "dir/b.txt": "base\n", "same.txt": "x\n"})
	f.commitOn("feat/c", "main", map[string]string{"a.txt": "branch\n", "dir/b.txt": "branch\n", "ok.txt": "ok\n"})
	f.commitMain(map[string]string{"a.txt": "main\n", "dir/b.txt": "main\n"})
	refs, log := f.refs(), f.reflog("refs/heads/main")

	res, err := f.merge(merge.Request{Branch: "feat/c", Job: "j"})
	if !errors.Is(err, merge.ErrConflict) {
		t.Fatalf("merge: %v, want ErrConflict", err)
	}
	if res == nil || res.Kind != merge.Conflict || res.Written {
		t.Fatalf("result %+v, want kind conflict, nothing written", res)
	}
	if diff := cmp.Diff([]string{"a.txt", "dir/b.txt"}, res.Conflicts); diff != "" {
		t.Fatalf("conflicting paths (-want +got):\n%s", diff)
	}
	for _, p := range []string{"a.txt", "dir/b.txt"} {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name %s", err, p)
		}
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" {
		t.Fatalf("refs changed (-before +after):\n%s", diff)
	}
	if f.reflog("refs/heads/main") != log || f.status() != "" {
		t.Fatal("main's reflog or worktree changed")
	}
	f.leaseFree("main")
}

// Conflicting paths are reported as they are named, not in git's quoted
// form.
func TestConflictPathsUnquoted(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	names := []string{"héllo.txt", "with space.txt"}
	files := func(v string) map[string]string {
		m := map[string]string{}
		for _, n := range names {
			m[n] = v
		}
		return m
	}
	f.commitMain(files("base\n"))
	f.commitOn("feat/q", "main", files("branch\n"))
	f.commitMain(files("main\n"))
	res, err := f.merge(merge.Request{Branch: "feat/q"})
	if !errors.Is(err, merge.ErrConflict) {
		t.Fatalf("merge: %v, want ErrConflict", err)
	}
	if diff := cmp.Diff(names, res.Conflicts); diff != "" {
		t.Fatalf("conflicting paths are listed in git's quoted form, not as named (-want +got):\n%s", diff)
	}
}

func TestFFOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/d", "main", map[string]string{"d.txt": "d\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	refs := f.refs()
	res, err := f.merge(merge.Request{Branch: "feat/d", FFOnly: true})
	if !errors.Is(err, merge.ErrNotFastForward) {
		t.Fatalf("--ff-only on a diverged branch: %v, want ErrNotFastForward", err)
	}
	if res != nil && res.Written {
		t.Fatalf("result %+v written", res)
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" {
		t.Fatalf("refs changed (-before +after):\n%s", diff)
	}
	f.leaseFree("main")

	// A fast-forward is fine with --ff-only.
	tip := f.commitOn("feat/e", "main", map[string]string{"e.txt": "e\n"})
	if res := f.mustMerge(merge.Request{Branch: "feat/e", FFOnly: true}); res.Kind != merge.FastForward || f.rev("main") != tip {
		t.Fatalf("--ff-only fast-forward: %+v, main %s", res, f.rev("main"))
	}
}

// The same merge twice: the second finds it merged, and there is exactly one
// merge commit. With a commit-graph written before the merges (the merge
// commit is newer than the graph) and between them (it is in the graph).
func TestMergeTwice(t *testing.T) {
	t.Parallel()
	for _, graph := range []string{"none", "before", "between"} {
		t.Run(graph, func(t *testing.T) { testMergeTwice(t, graph) })
	}
}

func testMergeTwice(t *testing.T, graph string) {
	f := newFixture(t)
	b := f.commitOn("feat/t", "main", map[string]string{"t.txt": "t\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	if graph == "before" {
		f.git("commit-graph", "write", "--reachable")
	}
	first := f.mustMerge(merge.Request{Branch: "feat/t", Job: "j"})
	if first.Kind != merge.Merged {
		t.Fatalf("first merge: %s", first.Kind)
	}
	if graph == "between" {
		f.git("commit-graph", "write", "--reachable")
	}
	refs, log := f.refs(), f.reflog("refs/heads/main")
	second := f.mustMerge(merge.Request{Branch: "feat/t", Job: "j"})
	if second.Kind != merge.AlreadyMerged || second.Written {
		t.Fatalf("second merge: %+v, want already merged", second)
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" || f.reflog("refs/heads/main") != log {
		t.Fatalf("second merge changed refs (-before +after):\n%s", diff)
	}
	if n := f.mergeCommits("main", "feat/t"); n != 1 {
		t.Fatalf("%d merge commits of feat/t, want 1", n)
	}
	if !f.isAncestor(b, f.rev("main")) {
		t.Fatal("branch not contained in main")
	}
	f.leaseFree("main")
}

// With a fixed author and date, two merges of the same branch into two
// identical targets (a repository and its clone) make the same commit.
func TestMergeCommitIsDeterministic(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/det", "main", map[string]string{"det.txt": "d\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})

	cloneDir := filepath.Join(f.tmp, "clone")
	f.git("clone", "-q", f.dir, cloneDir)
	f.g.Git(cloneDir, "branch", "feat/det", "origin/feat/det")
	c := openFixture(t, f.g, cloneDir)

	req := merge.Request{Branch: "feat/det", Job: "det.merge.1.00000000", Author: merge.Signature{
		Name: "Merge Bot", Email: "bot@example.invalid",
		When: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600)),
	}}
	r1 := f.mustMerge(req)
	r2 := c.mustMerge(req)
	if r1.Kind != merge.Merged || r2.Kind != merge.Merged {
		t.Fatalf("kinds %s, %s; want merges", r1.Kind, r2.Kind)
	}
	if r1.Commit != r2.Commit {
		t.Fatalf("merge commits differ: %s and %s", r1.Commit, r2.Commit)
	}
	want := "Merge Bot|bot@example.invalid|1767319445|Merge Bot|bot@example.invalid|1767319445"
	if got := f.git("log", "-1", "--format=%an|%ae|%at|%cn|%ce|%ct", r1.Commit); got != want {
		t.Fatalf("signature %q, want %q", got, want)
	}
	// Rebuilt in the same repository (the target put back), it is the
	// same commit again.
	f.git("update-ref", "refs/heads/main", r1.OldTarget, r1.Commit)
	f.git("reset", "-q", "--hard")
	r3 := f.mustMerge(req)
	if r3.Commit != r1.Commit {
		t.Fatalf("rebuilt merge commit %s, want %s", r3.Commit, r1.Commit)
	}
}

// A merge into a target checked out in a linked worktree brings that
// worktree along.
func TestTargetInLinkedWorktree(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wt := f.g.Worktree("rel", "release/1.0")
	f.g.Commit(wt, "release work", map[string]string{"r.txt": "r\n"})
	b := f.commitOn("fix", "main", map[string]string{"fix.txt": "fix\n"})
	res := f.mustMerge(merge.Request{Branch: "fix", Target: "release/1.0"})
	if res.Kind != merge.Merged || res.Worktree != wt {
		t.Fatalf("result %+v, want a merge that updated %s", res, wt)
	}
	if got := f.g.Git(wt, "rev-parse", "HEAD"); got != f.rev("release/1.0") || !f.isAncestor(b, got) {
		t.Fatalf("linked worktree HEAD %s, release %s", got, f.rev("release/1.0"))
	}
	if st := f.g.Git(wt, "status", "--porcelain"); st != "" {
		t.Fatalf("linked worktree status:\n%s", st)
	}
	if _, err := os.Stat(filepath.Join(wt, "fix.txt")); err != nil {
		t.Fatal(err)
	}
	// The main worktree (on main) is untouched.
	if f.status() != "" || f.rev("HEAD") != f.rev("main") {
		t.Fatal("main worktree changed")
	}
	f.leaseFree("release/1.0")
}

// writeFile writes a file of the main worktree.
func (f *fixture) writeFile(path, content string) {
	f.t.Helper()
	full := filepath.Join(f.dir, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// readFile reads a file of the main worktree ("<missing>" when absent).
func (f *fixture) readFile(path string) string {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, path))
	if errors.Is(err, os.ErrNotExist) {
		return "<missing>"
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

// localChanges makes, in the main worktree, an unstaged change to
// tracked.txt, a staged one to staged.txt and an untracked file: none in a
// path the merges of these tests touch.
func (f *fixture) localChanges() {
	f.t.Helper()
	f.writeFile("tracked.txt", "local edit\n")
	f.writeFile("staged.txt", "staged edit\n")
	f.git("add", "staged.txt")
	f.writeFile("notes/untracked.txt", "mine\n")
}

// keptLocalChanges fails the test unless the changes of localChanges are
// there as they were made (staged still staged, unstaged still unstaged),
// the index otherwise holds main's tree, and the files match it.
func (f *fixture) keptLocalChanges(when string) {
	f.t.Helper()
	for path, want := range map[string]string{"tracked.txt": "local edit\n", "staged.txt": "staged edit\n", "notes/untracked.txt": "mine\n"} {
		if got := f.readFile(path); got != want {
			f.t.Fatalf("%s: %s is %q, want the local change %q kept", when, path, got, want)
		}
	}
	want := "M  staged.txt\n M tracked.txt\n?? notes/untracked.txt"
	if got := f.git("status", "--porcelain", "--untracked-files=all"); got != want {
		f.t.Fatalf("%s: status\n%s\nwant\n%s", when, got, want)
	}
	if f.rev("HEAD") != f.rev("main") {
		f.t.Fatalf("%s: HEAD %s, main %s", when, f.rev("HEAD"), f.rev("main"))
	}
	// The index is main's tree plus the staged change, nothing else.
	if got := f.git("diff", "--cached", "--name-only", "main"); got != "staged.txt" {
		f.t.Fatalf("%s: the index differs from main in %q, want staged.txt only", when, got)
	}
}

// Local changes in paths the merge does not touch are kept, as git merge
// keeps them: staged, unstaged and untracked, through a merge commit and a
// fast-forward alike (DESIGN.md merge finalization step 6).
func TestLocalChangesElsewhereKept(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"tracked.txt": "v1\n", "staged.txt": "s1\n"})
	f.commitOn("feat/w", "main", map[string]string{"w.txt": "w\n", "notes/w.txt": "w\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	f.localChanges()

	res, err := f.merge(merge.Request{Branch: "feat/w"})
	if err != nil || res.Kind != merge.Merged || !res.Written || res.Worktree != f.dir {
		t.Fatalf("merge beside local changes elsewhere: %v (%+v), want a written merge that moved %s", err, res, f.dir)
	}
	if got := f.readFile("w.txt"); got != "w\n" {
		t.Fatalf("w.txt after the merge: %q", got)
	}
	f.keptLocalChanges("after the merge")
	f.noLeftovers("after the merge")
	f.leaseFree("main")

	f.commitOn("feat/ff", "main", map[string]string{"x.txt": "x\n"})
	res, err = f.merge(merge.Request{Branch: "feat/ff"})
	if err != nil || res.Kind != merge.FastForward || !res.Written {
		t.Fatalf("fast-forward beside local changes elsewhere: %v (%+v)", err, res)
	}
	if got := f.readFile("x.txt"); got != "x\n" {
		t.Fatalf("x.txt after the fast-forward: %q", got)
	}
	f.keptLocalChanges("after the fast-forward")
	f.noLeftovers("after the fast-forward")
	f.leaseFree("main")
}

// A local change in a path the merge changes refuses it, naming every such
// path (an edit, a staged edit, an untracked file where the merge brings
// one, a file where it brings a directory) and none elsewhere; nothing
// changes: refs, reflog, files, index.
func TestLocalChangeInTouchedPathRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"tracked.txt": "v1\n", "shared.txt": "s1\n", "staged.txt": "s1\n"})
	f.commitOn("feat/w", "main", map[string]string{"shared.txt": "branch\n", "staged.txt": "branch\n", "new.txt": "branch\n", "dir/in.txt": "branch\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	f.writeFile("tracked.txt", "local edit\n") // not touched: not named
	f.writeFile("shared.txt", "local edit\n")
	f.writeFile("staged.txt", "staged edit\n")
	f.git("add", "staged.txt")
	f.writeFile("new.txt", "mine\n")
	f.writeFile("dir", "a file where the merge brings a directory\n")

	refs, log, status, index := f.refs(), f.reflog("refs/heads/main"), f.status(), f.indexTree(f.dir)
	res, err := f.merge(merge.Request{Branch: "feat/w"})
	var de *merge.DirtyError
	if !errors.Is(err, merge.ErrDirtyWorktree) || !errors.As(err, &de) {
		t.Fatalf("merge over local changes: %v (%+v), want a DirtyError", err, res)
	}
	want := []string{"dir", "new.txt", "shared.txt", "staged.txt"}
	if diff := cmp.Diff(want, de.Paths); diff != "" {
		t.Fatalf("paths named (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, res.LocalChanges); diff != "" {
		t.Fatalf("result's local_changes (-want +got):\n%s", diff)
	}
	for _, s := range append(want, f.dir) {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	if strings.Contains(err.Error(), "tracked.txt") || res.Written {
		t.Errorf("error %q names tracked.txt (untouched) or claims a write (%v)", err, res.Written)
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" || f.reflog("refs/heads/main") != log {
		t.Fatalf("refs changed (-before +after):\n%s", diff)
	}
	if got := f.status(); got != status {
		t.Fatalf("status %q, want %q", got, status)
	}
	if got := f.indexTree(f.dir); got != index {
		t.Fatalf("the index changed: tree %s, was %s", got, index)
	}
	for path, content := range map[string]string{"tracked.txt": "local edit\n", "shared.txt": "local edit\n", "staged.txt": "staged edit\n",
		"new.txt": "mine\n", "dir": "a file where the merge brings a directory\n", "m.txt": "m\n", "w.txt": "<missing>"} {
		if got := f.readFile(path); got != content {
			t.Errorf("%s is %q, was %q", path, got, content)
		}
	}
	f.noLeftovers("after the refusal")
	f.leaseFree("main")

	// A fast-forward is refused the same way.
	main := f.rev("main")
	f.commitOn("feat/ff", "main", map[string]string{"shared.txt": "ff\n"})
	if _, err := f.merge(merge.Request{Branch: "feat/ff"}); !errors.As(err, &de) || !cmp.Equal(de.Paths, []string{"shared.txt"}) {
		t.Fatalf("fast-forward over a local change: %v, want a DirtyError naming shared.txt", err)
	}
	if got := f.rev("main"); got != main || f.reflog("refs/heads/main") != log {
		t.Fatalf("refused fast-forward moved main to %s", got)
	}
	f.leaseFree("main")
}

// A file the merge changes whose stat data changed but whose content did
// not (touched, or checked out again) is no local change: git merge
// refreshes the index first, and so does the merge.
func TestStatOnlyChangeIsNoLocalChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"shared.txt": "s1\n"})
	f.commitOn("feat/w", "main", map[string]string{"shared.txt": "branch\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(f.dir, "shared.txt"), later, later); err != nil {
		t.Fatal(err)
	}
	res, err := f.merge(merge.Request{Branch: "feat/w"})
	if err != nil || !res.Written {
		t.Fatalf("merge with shared.txt touched, not changed: %v (%+v)", err, res)
	}
	if got := f.readFile("shared.txt"); got != "branch\n" {
		t.Fatalf("shared.txt after the merge: %q", got)
	}
	f.inStep("after the merge")
}

// An untracked file where the merge brings a tracked one: the checkout must
// not be left inconsistent (HEAD moved, files not).
func TestUntrackedFileInTheWay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/u", "main", map[string]string{"new.txt": "from branch\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	if err := os.WriteFile(filepath.Join(f.dir, "new.txt"), []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := f.rev("main")
	res, err := f.merge(merge.Request{Branch: "feat/u"})
	after := f.rev("main")
	st := f.git("status", "--porcelain", "--untracked-files=no")
	if b, _ := os.ReadFile(filepath.Join(f.dir, "new.txt")); string(b) != "mine\n" {
		t.Fatalf("the untracked file was overwritten: %q", b)
	}
	switch {
	case err == nil && after != before && st == "":
		// Merged and the worktree came along (cannot be: the file is in the way).
	case err != nil && after == before && st == "":
		// Refused before writing: fine.
	default:
		t.Fatalf("an untracked file in the way leaves the target's checkout inconsistent: "+
			"merge returned %v (result %+v); main moved %s → %s but the worktree was not updated (status --untracked-files=no:\n%s)",
			err, res, before[:12], after[:12], st)
	}
}

// Check reports what the merge would do and writes nothing, takes no lease,
// and is not held up by a lease someone else holds.
func TestCheck(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitMain(map[string]string{"a.txt": "base\n"})
	f.git("branch", "old", "main")
	f.commitOn("conf", "main", map[string]string{"a.txt": "branch\n"})
	f.commitOn("clean", "main", map[string]string{"c.txt": "c\n"})
	f.commitMain(map[string]string{"a.txt": "main\n"})
	f.commitOn("ff", "main", map[string]string{"ff.txt": "ff\n"})

	leases := filepath.Join(f.repo.StateDir(), "leases")
	for _, held := range []bool{false, true} {
		if held {
			self, _ := procid.Self()
			if _, err := f.m.Leases.TryAcquire(context.Background(), "main", lease.Request{Holder: "someone", Owner: self, TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
		}
		refs := f.refs()
		leaseFiles := dirListing(t, leases)
		for branch, want := range map[string]merge.Kind{
			"old": merge.AlreadyMerged, "ff": merge.FastForward, "clean": merge.Merged, "conf": merge.Conflict,
		} {
			res, err := f.m.Merge(context.Background(), merge.Request{Branch: branch, Target: "main", Check: true, Wait: time.Millisecond})
			if want == merge.Conflict {
				if !errors.Is(err, merge.ErrConflict) {
					t.Errorf("check %s: %v, want ErrConflict", branch, err)
				}
				if res == nil || !cmp.Equal(res.Conflicts, []string{"a.txt"}) {
					t.Errorf("check %s: %+v, want conflict in a.txt", branch, res)
				}
			} else if err != nil {
				t.Errorf("check %s (lease held: %v): %v", branch, held, err)
				continue
			}
			if res.Kind != want || res.Written || res.Commit != "" || res.Token != 0 {
				t.Errorf("check %s: %+v, want kind %s, nothing written, no token", branch, res, want)
			}
		}
		if diff := cmp.Diff(refs, f.refs()); diff != "" {
			t.Fatalf("check changed refs (-before +after):\n%s", diff)
		}
		if diff := cmp.Diff(leaseFiles, dirListing(t, leases)); diff != "" {
			t.Fatalf("check touched the leases (held: %v) (-before +after):\n%s", held, diff)
		}
	}
	if _, err := os.Stat(filepath.Join(leases, "main.seq")); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.m.Leases.Get("main"); l == nil || l.Token != 1 || l.Holder != "someone" {
		t.Fatalf("lease after checks: %+v, want someone's token 1", l)
	}
}

// dirListing maps each file of dir to its content (nil map when dir does
// not exist).
func dirListing(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = string(b)
	}
	return out
}

// A lease held by a live holder past the wait: ErrBusy, nothing written.
func TestMergeWaitsForLease(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/l", "main", map[string]string{"l.txt": "l\n"})
	self, _ := procid.Self()
	held, err := f.m.Leases.TryAcquire(context.Background(), "main", lease.Request{Holder: "other", Owner: self, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	refs := f.refs()
	_, err = f.m.Merge(context.Background(), merge.Request{Branch: "feat/l", Target: "main", Wait: 50 * time.Millisecond})
	if !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("merge while the lease is held: %v, want ErrBusy", err)
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" {
		t.Fatalf("refs changed (-before +after):\n%s", diff)
	}
	if l, _ := f.m.Leases.Get("main"); l == nil || l.Token != held.Token {
		t.Fatalf("lease %+v, want the other holder's", l)
	}
	// With the holder's own token, the merge runs under that lease and
	// leaves it held.
	res, err := f.m.Merge(context.Background(), merge.Request{Branch: "feat/l", Target: "main", Token: held.Token})
	if err != nil || res.Kind != merge.FastForward || res.Token != held.Token {
		t.Fatalf("merge with the held token: %+v, %v", res, err)
	}
	if l, _ := f.m.Leases.Get("main"); l == nil || l.Token != held.Token {
		t.Fatalf("lease after a merge under it: %+v, want it still held", l)
	}
}

// Fencing end to end: a merger whose lease was reclaimed and taken by
// another cannot move the target.
func TestMergeWithStaleToken(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/s", "main", map[string]string{"s.txt": "s\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	clk := time.Now()
	f.m.Leases.Now = func() time.Time { return clk }
	self, _ := procid.Self()
	ctx := context.Background()
	l1, err := f.m.Leases.TryAcquire(ctx, "main", lease.Request{Holder: "sleeper", Owner: self, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clk = clk.Add(2 * time.Second)
	if ok, err := f.m.Leases.Reclaim(ctx, "main"); !ok || err != nil {
		t.Fatalf("Reclaim: %v, %v", ok, err)
	}
	l2, err := f.m.Leases.TryAcquire(ctx, "main", lease.Request{Holder: "next", Owner: self, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	refs, log := f.refs(), f.reflog("refs/heads/main")
	res, err := f.m.Merge(ctx, merge.Request{Branch: "feat/s", Target: "main", Token: l1.Token})
	if !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("merge with reclaimed token %d: %+v, %v; want ErrStaleToken", l1.Token, res, err)
	}
	if res != nil && res.Written {
		t.Fatalf("result %+v written", res)
	}
	// A fast-forward is fenced the same way.
	f.commitOn("feat/ff", "main", map[string]string{"ff.txt": "ff\n"})
	if _, err := f.m.Merge(ctx, merge.Request{Branch: "feat/ff", Target: "main", Token: l1.Token}); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("fast-forward with reclaimed token: %v, want ErrStaleToken", err)
	}
	if got := f.rev("main"); !strings.Contains(refs, "refs/heads/main "+got) {
		t.Fatalf("main moved to %s", got)
	}
	if f.reflog("refs/heads/main") != log || f.status() != "" {
		t.Fatal("main's reflog or worktree changed")
	}
	if l, _ := f.m.Leases.Get("main"); l == nil || l.Token != l2.Token {
		t.Fatalf("lease %+v, want t2 = %d", l, l2.Token)
	}
	// The current holder can.
	if res, err := f.m.Merge(ctx, merge.Request{Branch: "feat/s", Target: "main", Token: l2.Token}); err != nil || res.Kind != merge.Merged {
		t.Fatalf("merge with the current token: %+v, %v", res, err)
	}
}

func TestBadNames(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	refs := f.refs()
	for _, req := range []merge.Request{
		{Branch: "-x", Target: "main"},
		{Branch: "a..b", Target: "main"},
		{Branch: "feat", Target: "../main"},
		{Branch: "feat", Target: "main", Remote: "--upload-pack=touch /tmp/x"},
	} {
		if _, err := f.m.Merge(context.Background(), req); !errors.Is(err, gitstate.ErrBadName) {
			t.Errorf("Merge(%+v): %v, want ErrBadName", req, err)
		}
	}
	if _, err := f.m.Merge(context.Background(), merge.Request{Branch: "missing", Target: "main", Wait: time.Second}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("merge of a missing branch: %v, want an error naming it", err)
	}
	if diff := cmp.Diff(refs, f.refs()); diff != "" {
		t.Fatalf("refs changed:\n%s", diff)
	}
	f.leaseFree("main")
}

// remoteFixture is a fixture whose origin is a bare repository holding main
// and the branch feat/r, which diverge.
func remoteFixture(t *testing.T) (*fixture, string) {
	f := newFixture(t)
	f.commitOn("feat/r", "main", map[string]string{"r.txt": "r\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	bare := filepath.Join(f.tmp, "origin.git")
	f.git("init", "-q", "--bare", "-b", "main", bare)
	f.git("remote", "add", "origin", bare)
	f.git("push", "-q", "origin", "main", "feat/r")
	return f, bare
}

func TestRemote(t *testing.T) {
	t.Parallel()
	f, bare := remoteFixture(t)
	oldRemote := f.g.Git(bare, "rev-parse", "main")
	res := f.mustMerge(merge.Request{Branch: "feat/r", Remote: "origin", Job: "j"})
	if res.Kind != merge.Merged || !res.Pushed || !res.Written {
		t.Fatalf("result %+v, want a pushed merge", res)
	}
	got := f.g.Git(bare, "rev-parse", "main")
	if got != res.NewTarget || got != res.Commit {
		t.Fatalf("origin's main = %s, want the merge %s", got, res.Commit)
	}
	if diff := cmp.Diff([]string{oldRemote, f.rev("feat/r")}, f.parents(got)); diff != "" {
		t.Fatalf("parents (-want +got):\n%s", diff)
	}
	// The local main came along (a fast-forward), and its checkout.
	if f.rev("main") != got || f.rev("HEAD") != got || f.status() != "" {
		t.Fatalf("local main %s, HEAD %s, status %q; want %s, clean", f.rev("main"), f.rev("HEAD"), f.status(), got)
	}
	f.leaseFree("main")

	again := f.mustMerge(merge.Request{Branch: "feat/r", Remote: "origin", Job: "j"})
	if again.Kind != merge.AlreadyMerged || again.Pushed || again.Written {
		t.Fatalf("second merge: %+v, want already merged", again)
	}
	if f.g.Git(bare, "rev-parse", "main") != got {
		t.Fatal("second merge moved origin's main")
	}
	if n := f.mergeCommits("main", "feat/r"); n != 1 {
		t.Fatalf("%d merge commits, want 1", n)
	}
}

// The remote's main moved after our last fetch: the merge fetches first and
// lands on top, losing nothing.
func TestRemoteMovedMeanwhile(t *testing.T) {
	t.Parallel()
	f, bare := remoteFixture(t)
	other := filepath.Join(f.tmp, "other")
	f.git("clone", "-q", bare, other)
	theirs := f.g.Commit(other, "someone else's work", map[string]string{"theirs.txt": "theirs\n"})
	f.g.Git(other, "push", "-q", "origin", "main")
	stale := f.rev("refs/remotes/origin/main")
	if stale == theirs {
		t.Fatal("setup: local already knows the remote's new commit")
	}

	res := f.mustMerge(merge.Request{Branch: "feat/r", Remote: "origin"})
	if res.Kind != merge.Merged || !res.Pushed {
		t.Fatalf("result %+v, want a pushed merge", res)
	}
	got := f.g.Git(bare, "rev-parse", "main")
	if got != res.Commit {
		t.Fatalf("origin's main %s, want %s", got, res.Commit)
	}
	if diff := cmp.Diff([]string{theirs, f.rev("feat/r")}, f.parents(got)); diff != "" {
		t.Fatalf("the merge is not on top of the remote's main (-want +got):\n%s", diff)
	}
	f.g.Git(bare, "cat-file", "-e", got+":theirs.txt")
	f.g.Git(bare, "cat-file", "-e", got+":r.txt")
	if f.rev("main") != got || f.status() != "" {
		t.Fatalf("local main %s, status %q", f.rev("main"), f.status())
	}
	f.leaseFree("main")
}

// A branch that exists only on the remote is merged from there.
func TestRemoteOnlyBranch(t *testing.T) {
	t.Parallel()
	f, bare := remoteFixture(t)
	other := filepath.Join(f.tmp, "other")
	f.git("clone", "-q", bare, other)
	f.g.Git(other, "checkout", "-q", "-b", "feat/o")
	tip := f.g.Commit(other, "remote-only", map[string]string{"o.txt": "o\n"})
	f.g.Git(other, "push", "-q", "origin", "feat/o")
	res := f.mustMerge(merge.Request{Branch: "feat/o", Remote: "origin"})
	if res.BranchTip != tip || !res.Pushed {
		t.Fatalf("result %+v, want branch tip %s pushed", res, tip)
	}
	if !f.isAncestor(tip, f.g.Git(bare, "rev-parse", "main")) {
		t.Fatal("remote-only branch not merged")
	}
}

// The remote's main moves after the merge fetched it, before its push: the
// push is a compare-and-swap, so it is rejected and nothing is lost; the
// merge then starts again from the fetch and lands on top.
func TestRemoteMovesDuringMerge(t *testing.T) {
	t.Parallel()
	f, bare := remoteFixture(t)
	other := filepath.Join(f.tmp, "other")
	f.git("clone", "-q", bare, other)
	theirs := f.g.Commit(other, "pushed while we merge", map[string]string{"theirs.txt": "theirs\n"})
	// A pre-push hook of our repository pushes their commit the first time
	// it runs: after our fetch and our ref advertisement, before our pack.
	mark := filepath.Join(f.tmp, "moved")
	hook := "#!/bin/sh\n" +
		"unset $(git rev-parse --local-env-vars)\n" +
		"[ -e '" + mark + "' ] && exit 0\n" +
		": > '" + mark + "'\n" +
		"git -C '" + other + "' push -q origin main >&2\n"
	if err := os.WriteFile(filepath.Join(f.repo.CommonDir, "hooks", "pre-push"), []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := f.merge(merge.Request{Branch: "feat/r", Remote: "origin"})
	if _, serr := os.Stat(mark); serr != nil {
		t.Fatalf("the pre-push hook did not run: %v", serr)
	}
	got := f.g.Git(bare, "rev-parse", "main")
	if !f.isAncestor(theirs, got) && got != theirs {
		t.Fatalf("their commit %s was lost: origin's main is %s", theirs, got)
	}
	if err != nil {
		if got != theirs {
			t.Fatalf("merge failed (%v) and origin's main is %s, not their %s", err, got, theirs)
		}
		t.Fatalf("a push rejected because the remote moved is not retried: merge.push looks for \"stale info\"/\"rejected\"/\"fetch first\" "+
			"in stderr, but git push --porcelain reports rejections ([rejected] (stale info), [remote rejected]) on stdout and stderr only says "+
			"\"failed to push some refs\"; nothing was lost, but the merge failed instead of starting again: %v", err)
	}
	if res.Kind != merge.Merged || !res.Pushed || got != res.Commit {
		t.Fatalf("result %+v; origin's main %s", res, got)
	}
	if diff := cmp.Diff([]string{theirs, f.rev("feat/r")}, f.parents(got)); diff != "" {
		t.Fatalf("the merge is not on top of their commit (-want +got):\n%s", diff)
	}
	f.leaseFree("main")
}
