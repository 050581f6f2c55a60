package faultgit_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/gittest"
)

func TestMain(m *testing.M) {
	if faultgit.Invoked() {
		os.Exit(faultgit.Main())
	}
	os.Exit(m.Run())
}

// wrapped returns a repository and a function running git through the
// wrapper with rules in its environment.
func wrapped(t *testing.T) (*gittest.Repo, string, func(rules string, args ...string) (string, error)) {
	t.Helper()
	g := gittest.New(t)
	dir := t.TempDir()
	path, err := faultgit.InstallSelf(dir)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	return g, state, func(rules string, args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = g.Dir
		cmd.Env = append(g.Env(), "PATH="+path, faultgit.EnvRules+"="+rules)
		// exec.Command looked git up on this process's PATH: use the
		// wrapper's.
		cmd.Path = filepath.Join(dir, "git")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
}

func TestFailNth(t *testing.T) {
	g, state, git := wrapped(t)
	head := g.Git(g.Dir, "rev-parse", "HEAD")
	for i := 1; i <= 3; i++ {
		out, err := git("update-ref#2:fail=7", "update-ref", "refs/heads/x", head)
		if i == 2 {
			var ee *exec.ExitError
			if !errAs(err, &ee) || ee.ExitCode() != 7 || !strings.Contains(out, "injected failure of git update-ref") {
				t.Fatalf("update-ref #2: %v %q, want exit 7 and the injection said", err, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("update-ref #%d: %v %q", i, err, out)
		}
	}
	// Other subcommands are not counted as update-ref.
	if out, err := git("update-ref#1:fail", "-C", g.Dir, "rev-parse", "HEAD"); err != nil || out != head {
		t.Fatalf("rev-parse through the wrapper: %v %q", err, out)
	}
	log, err := faultgit.Log(state)
	if err != nil || len(log) != 4 || !strings.HasPrefix(log[3], "4\trev-parse\t-C ") {
		t.Fatalf("log: %q, %v", log, err)
	}
	if out, err := git("*#5:fail", "rev-parse", "HEAD"); err == nil {
		t.Fatalf("invocation 5 with *#5:fail: %q, want a failure", out)
	}
}

func TestFailAfter(t *testing.T) {
	g, _, git := wrapped(t)
	head := g.Git(g.Dir, "rev-parse", "HEAD")
	if _, err := git("update-ref:fail-after", "update-ref", "refs/heads/y", head); err == nil {
		t.Fatal("fail-after: no failure reported")
	}
	if got := g.Git(g.Dir, "rev-parse", "refs/heads/y"); got != head {
		t.Fatalf("fail-after: the update did not happen: %s", got)
	}
}

func TestHoldIndexLock(t *testing.T) {
	g, _, git := wrapped(t)
	lock := filepath.Join(g.Dir, ".git", "index.lock")
	// The wrapped command runs while the lock is held: a commit in it
	// fails as git fails on a held index.
	out, err := git("commit:hold-index-lock", "commit", "-q", "--allow-empty", "-m", "x")
	if err == nil || !strings.Contains(out, "index.lock") {
		t.Fatalf("commit under a held index.lock: %v %q, want git's refusal", err, out)
	}
	if _, err := os.Stat(lock); !os.IsNotExist(err) {
		t.Fatalf("index.lock left behind: %v", err)
	}
	if out, err := git("", "commit", "-q", "--allow-empty", "-m", "x"); err != nil {
		t.Fatalf("commit without rules: %v %q", err, out)
	}
}

func TestPause(t *testing.T) {
	g, state, git := wrapped(t)
	done := make(chan error, 1)
	go func() {
		_, err := git("tag:pause=p", "tag", "t1")
		done <- err
	}()
	for !faultgit.Paused(state, "p") {
		select {
		case err := <-done:
			t.Fatalf("git tag ended before pausing: %v", err)
		default:
		}
		// The paused file is the signal; polling it is the wait.
		waitShort()
	}
	if out, _ := g.TryGit(g.Dir, "tag", "-l", "t1"); out != "" {
		t.Fatal("the tag exists while git tag is paused before running")
	}
	if err := faultgit.Resume(state, "p"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out := g.Git(g.Dir, "tag", "-l", "t1"); out != "t1" {
		t.Fatalf("tag after resume: %q", out)
	}
}

func TestParse(t *testing.T) {
	for _, bad := range []string{"read-tree", "read-tree:explode", "x#0:fail", "x#a:fail", "x:delay=soon", "x:fail=0", "x:pause=a/b"} {
		if _, err := faultgit.Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
	if _, err := faultgit.Parse("read-tree:fail; update-ref#2:fail-after;*#3:delay=1ms;push:pause=p;x:hold-index-lock"); err != nil {
		t.Error(err)
	}
	for args, want := range map[string]string{
		"-C d -c a=b update-ref x":   "update-ref",
		"--git-dir x status":         "status",
		"--no-optional-locks status": "status",
		"--version":                  "",
	} {
		if got := faultgit.Subcommand(strings.Fields(args)); got != want {
			t.Errorf("Subcommand(%s) = %q, want %q", args, got, want)
		}
	}
}
