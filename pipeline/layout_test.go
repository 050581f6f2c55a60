package pipeline_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// In a --separate-git-dir repository, the main worktree is known inside it
// (job worktrees go under it, monitors start there with the absolute
// config) and unknown from a linked worktree: there a job worktree is
// refused (with a relative worktrees dir) rather than made elsewhere, and
// a monitor still starts in the worktree it was dispatched from.
func TestSeparateGitDirWorktrees(t *testing.T) {
	os.Unsetenv("GIT_DIR")
	r := gittest.New(t) // its git environment
	base := filepath.Dir(r.Dir)
	gd := filepath.Join(base, "store", "repo.gitdir")
	os.MkdirAll(filepath.Dir(gd), 0o755)
	top := filepath.Join(base, "top")
	r.Git(base, "init", "-q", "-b", "main", "--separate-git-dir", gd, top)
	r.Commit(top, "seed", map[string]string{"f": "1"})
	linked := filepath.Join(base, "linked")
	r.Git(top, "worktree", "add", "-q", "-b", "side", linked)

	open := func(dir string) *pipeline.Env {
		repo, err := gitstate.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := gitstate.Init(repo.StateDir()); err != nil {
			t.Fatal(err)
		}
		s, err := gitstate.OpenStore(repo.StateDir())
		if err != nil {
			t.Fatal(err)
		}
		cfg := config.Default()
		cfg.Path = filepath.Join(dir, "orch.toml")
		return &pipeline.Env{Repo: repo, Store: s, Config: cfg}
	}

	env := open(top)
	if wt := env.WorktreePath("t"); !strings.HasPrefix(wt, top+"/") {
		t.Errorf("WorktreePath from the main worktree = %s, want it under %s", wt, top)
	}
	if got, want := env.MonitorArgs(), []string{"-C", top, "--config", filepath.Join(top, "orch.toml")}; !slices.Equal(got, want) {
		t.Errorf("MonitorArgs = %q, want %q", got, want)
	}
	j := &gitstate.Job{Task: "t", Stage: "s", Branch: "feat/t", Target: "main", Attempt: 1}
	wt, err := env.EnsureWorktree(context.Background(), j)
	if err != nil || !strings.HasPrefix(wt, top+"/") {
		t.Errorf("EnsureWorktree from the main worktree = %q, %v", wt, err)
	}

	env = open(linked)
	if got := env.MonitorArgs(); !slices.Equal(got[:2], []string{"-C", linked}) {
		t.Errorf("MonitorArgs from the linked worktree = %q", got)
	}
	j = &gitstate.Job{Task: "u", Stage: "s", Branch: "feat/u", Target: "main", Attempt: 1}
	wt, err = env.EnsureWorktree(context.Background(), j)
	if !errors.Is(err, gitstate.ErrMainWorktreeUnknown) {
		t.Errorf("EnsureWorktree from the linked worktree = %q, %v; want ErrMainWorktreeUnknown", wt, err)
	}
	// The one already made is still found: it is recorded under worktrees/.
	j = &gitstate.Job{Task: "t", Stage: "s", Branch: "feat/t", Target: "main", Attempt: 1}
	if got, err := env.EnsureWorktree(context.Background(), j); err != nil || !strings.HasPrefix(got, top+"/") {
		t.Errorf("EnsureWorktree of an existing worktree from the linked worktree = %q, %v", got, err)
	}
}
