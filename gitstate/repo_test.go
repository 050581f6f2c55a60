package gitstate

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/orch-hooks/orch-hooks/gittest"
)

func TestOpenFromEveryWorktree(t *testing.T) {
	r := gittest.New(t)
	wantCommon := filepath.Join(r.Dir, ".git")
	sub := filepath.Join(r.Dir, "a", "b")
	os.MkdirAll(sub, 0o755)
	linked := r.Worktree("one", "feat/one")
	// Settings some git libraries refuse (go-git v5.17+ does).
	r.Git(r.Dir, "config", "extensions.worktreeConfig", "true")
	r.Git(r.Dir, "pack-refs", "--all")

	for _, tc := range []struct{ name, dir, worktree string }{
		{"main top", r.Dir, r.Dir},
		{"main subdir", sub, r.Dir},
		{"linked worktree", linked, linked},
		{"git dir itself", wantCommon, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GIT_DIR", "")
			os.Unsetenv("GIT_DIR")
			repo, err := Open(tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			if repo.CommonDir != wantCommon {
				t.Errorf("CommonDir = %s, want %s", repo.CommonDir, wantCommon)
			}
			if repo.StateDir() != filepath.Join(wantCommon, "orch") {
				t.Errorf("StateDir = %s", repo.StateDir())
			}
			if repo.MainWorktree != r.Dir {
				t.Errorf("MainWorktree = %s, want %s", repo.MainWorktree, r.Dir)
			}
			if repo.Worktree != tc.worktree {
				t.Errorf("Worktree = %s, want %s", repo.Worktree, tc.worktree)
			}
		})
	}
}

func TestOpenOutsideRepository(t *testing.T) {
	os.Unsetenv("GIT_DIR")
	dir := t.TempDir()
	_, err := Open(dir)
	if !errors.Is(err, ErrNotRepository) {
		t.Fatalf("Open(%s) = %v, want ErrNotRepository", dir, err)
	}
}

func TestOpenHonoursGitDir(t *testing.T) {
	r := gittest.New(t)
	t.Setenv("GIT_DIR", filepath.Join(r.Dir, ".git"))
	repo, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if repo.CommonDir != filepath.Join(r.Dir, ".git") {
		t.Fatalf("CommonDir = %s", repo.CommonDir)
	}
}
