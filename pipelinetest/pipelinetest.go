// Package pipelinetest gives tests of the packages above pipeline (and
// their re-executed helper processes) a real repository with an
// initialised state dir, opened the way the command line opens it.
package pipelinetest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// Open opens the pipeline of the initialised repository at dir with the
// orch.toml at the top of its main worktree, which must exist.
func Open(dir string) (*pipeline.Env, error) {
	r, err := gitstate.Open(dir)
	if err != nil {
		return nil, err
	}
	s, err := gitstate.OpenStore(r.StateDir())
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(filepath.Join(r.MainWorktree, config.FileName), true)
	if err != nil {
		return nil, err
	}
	return &pipeline.Env{Repo: r, Store: s, Config: cfg}, nil
}

// NewState makes a repository (gittest.New) with an initialised state dir,
// opened, for tests that build their configuration in memory.
func NewState(t testing.TB) (*gittest.Repo, *gitstate.Repo, *gitstate.Store) {
	t.Helper()
	repo := gittest.New(t)
	r, err := gitstate.Open(repo.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := gitstate.Init(r.StateDir()); err != nil {
		t.Fatal(err)
	}
	s, err := gitstate.OpenStore(r.StateDir())
	if err != nil {
		t.Fatal(err)
	}
	return repo, r, s
}

// New makes a repository (NewState) with orchToml as its orch.toml, and
// opens its pipeline in this process with the store's actor set to "test".
func New(t testing.TB, orchToml string) (*gittest.Repo, *pipeline.Env) {
	t.Helper()
	repo, _, _ := NewState(t)
	if err := os.WriteFile(filepath.Join(repo.Dir, config.FileName), []byte(orchToml), 0o644); err != nil {
		t.Fatal(err)
	}
	env, err := Open(repo.Dir)
	if err != nil {
		t.Fatal(err)
	}
	env.Store.Actor = "test"
	return repo, env
}
