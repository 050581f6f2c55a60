package gitstate

import (
	"context"
	"os"
	"testing"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// Refs read from the files agree with git: loose, packed, a loose ref
// overriding a stale packed one, and missing refs.
func TestReadRefMatchesGit(t *testing.T) {
	r := gittest.New(t)
	r.Git(r.Dir, "branch", "feat/a")
	r.Git(r.Dir, "branch", "packed/b")
	r.Git(r.Dir, "pack-refs", "--all")
	r.Commit(r.Dir, "two", map[string]string{"f": "2"})
	r.Git(r.Dir, "branch", "-f", "feat/a", "HEAD") // loose now, packed entry stale
	repo, err := Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"refs/heads/main", "refs/heads/feat/a", "refs/heads/packed/b"} {
		got, ok, err := repo.readRef(name)
		want := r.Git(r.Dir, "rev-parse", name)
		if err != nil || !ok || got != want {
			t.Errorf("readRef(%s) = %s, %v, %v; git says %s", name, got, ok, err, want)
		}
		if id, err := repo.ResolveCommit(context.Background(), name); err != nil || id != want {
			t.Errorf("ResolveCommit(%s) = %s, %v; git says %s", name, id, err, want)
		}
	}
	for _, name := range []string{"refs/heads/nope", "refs/heads/feat/a/deeper", "refs/heads/feat"} {
		if _, ok, _ := repo.readRef(name); ok {
			t.Errorf("readRef(%s) found a ref that does not exist", name)
		}
		if _, err := repo.ResolveCommit(context.Background(), name); err == nil {
			t.Errorf("ResolveCommit(%s) resolved a ref that does not exist", name)
		}
	}
}

func TestWorktreeOf(t *testing.T) {
	r := gittest.New(t)
	linked := r.Worktree("one", "feat/one")
	gone := r.Worktree("gone", "feat/gone")
	if err := os.RemoveAll(gone); err != nil {
		t.Fatal(err)
	}
	repo, err := Open(linked)
	if err != nil {
		t.Fatal(err)
	}
	for branch, want := range map[string]string{"main": r.Dir, "feat/one": linked, "feat/gone": "", "feat/none": ""} {
		if got, err := repo.WorktreeOf(branch); err != nil || got != want {
			t.Errorf("WorktreeOf(%s) = %q, %v; want %q", branch, got, err, want)
		}
	}
}
