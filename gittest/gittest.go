// Package gittest makes real git repositories in temporary directories for
// tests. Nothing here mocks git: every helper runs the git binary.
package gittest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Env is the environment every git command of a test runs with: a fixed
// identity, no system or global config, and hooks of orch-hooks disabled.
func Env(home string) []string {
	env := []string{}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_") || strings.HasPrefix(k, "ORCH_") || k == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.invalid",
		"ORCH_HOOKS=0",
	)
}

// SetupProcess gives the test process itself (and so every git it
// starts, through code under test that runs git with the process's
// environment) a private, deterministic git environment: a private home,
// no GIT_ or ORCH_ variables of the machine, no system config, a fixed
// identity, no credential prompt. Call it from TestMain before m.Run;
// cleanup removes the private home.
func SetupProcess() (cleanup func(), err error) {
	home, err := os.MkdirTemp("", "orch-test-home-")
	if err != nil {
		return nil, err
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_") || strings.HasPrefix(k, "ORCH_") {
			os.Unsetenv(k)
		}
	}
	for k, v := range map[string]string{
		"HOME":                home,
		"XDG_CONFIG_HOME":     filepath.Join(home, ".config"),
		"GIT_CONFIG_NOSYSTEM": "1",
		"GIT_AUTHOR_NAME":     "Test",
		"GIT_AUTHOR_EMAIL":    "test@example.invalid",
		"GIT_COMMITTER_NAME":  "Test",
		"GIT_COMMITTER_EMAIL": "test@example.invalid",
		"GIT_TERMINAL_PROMPT": "0",
	} {
		os.Setenv(k, v)
	}
	// A race-enabled helper would wait a second at exit for late reports.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=10")
	}
	return func() { os.RemoveAll(home) }, nil
}

// Repo is a repository made for one test.
type Repo struct {
	t    testing.TB
	Dir  string // top of the main worktree
	home string
}

// New makes a repository with one commit on main and returns it. It is
// removed when the test ends.
func New(t testing.TB) *Repo {
	t.Helper()
	base := t.TempDir()
	if r, err := filepath.EvalSymlinks(base); err == nil {
		base = r
	}
	home := filepath.Join(base, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &Repo{t: t, Dir: filepath.Join(base, "repo"), home: home}
	r.Git(base, "init", "-q", "-b", "main", r.Dir)
	r.Git(r.Dir, "commit", "-q", "--allow-empty", "-m", "initial")
	return r
}

// Git runs git in dir and returns its trimmed stdout, failing the test on
// error.
func (r *Repo) Git(dir string, args ...string) string {
	r.t.Helper()
	out, err := r.TryGit(dir, args...)
	if err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TryGit runs git in dir and returns its trimmed combined output and error.
func (r *Repo) TryGit(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = Env(r.home)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Env is the environment the repository's git commands run with.
func (r *Repo) Env() []string { return Env(r.home) }

// Commit writes files (path → content) in dir and commits them.
func (r *Repo) Commit(dir, msg string, files map[string]string) string {
	r.t.Helper()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			r.t.Fatal(err)
		}
		r.Git(dir, "add", "--", p)
	}
	r.Git(dir, "commit", "-q", "--allow-empty", "-m", msg)
	return r.Git(dir, "rev-parse", "HEAD")
}

// Worktree adds a linked worktree for a new branch and returns its path.
func (r *Repo) Worktree(name, branch string) string {
	r.t.Helper()
	dir := filepath.Join(filepath.Dir(r.Dir), "wt-"+name)
	r.Git(r.Dir, "worktree", "add", "-q", "-b", branch, dir)
	return dir
}
