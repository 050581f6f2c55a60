package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/testproc"
)

// TestLeaseFromScripts takes a lease from shell scripts the ways scripts
// do (issue 14 item 7): command substitution with and without redirects,
// under if, in a pipeline, and in a CI step's shell, in bash, dash, zsh and
// sh. In each, while the script runs the lease is the script's (its owner
// pid is the script's $$), held: a reaper pass leaves it and a merge finds
// it busy. Once the script ends it is stale and the next merge reclaims it.
// A shell that is not installed is skipped.
func TestLeaseFromScripts(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not found on PATH")
	}
	const acquire = "orch-hooks lease acquire --target main --ttl 1h"
	idioms := []struct {
		name, line string
		// pipe: the token is read in a pipeline's last element, which
		// only zsh runs in the script's own shell.
		pipe bool
	}{
		{"subst", `t=$(` + acquire + `)`, false},
		{"subst-devnull", `t=$(` + acquire + ` 2>/dev/null)`, false},
		{"subst-2to1", `t=$(` + acquire + ` 2>&1)`, false},
		{"if-subst", `if t=$(` + acquire + ` 2>/dev/null); then :; else exit 1; fi`, false},
		{"backquote", "t=`" + acquire + " 2>/dev/null`", false},
		{"pipe-read", acquire + ` | read t`, true},
	}
	shells := []struct {
		name string
		argv []string // the script's path is appended
	}{
		{"bash", []string{"bash"}},
		{"dash", []string{"dash"}},
		{"zsh", []string{"zsh"}},
		{"sh", []string{"sh"}},
		// GitHub Actions runs a run: step as this command on a file.
		{"github-step", []string{"bash", "--noprofile", "--norc", "-eo", "pipefail"}},
	}
	// Each case has its own repository and script, and mostly waits for
	// processes: they run in parallel, beside the testscripts.
	t.Parallel()
	// sh is another shell under its own name (dash on Debian, bash
	// elsewhere): tested once, under the name it really has.
	real := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			return ""
		}
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return p
		}
		return r
	}
	for _, sh := range shells {
		t.Run(sh.name, func(t *testing.T) {
			if _, err := exec.LookPath(sh.argv[0]); err != nil {
				t.Skipf("%s is not installed (apt-get install %s)", sh.argv[0], sh.argv[0])
			}
			if sh.name == "sh" {
				for _, other := range []string{"bash", "dash", "zsh"} {
					if r := real(other); r != "" && r == real("sh") {
						t.Skipf("sh is %s, tested as %s", r, other)
					}
				}
			}
			for _, idiom := range idioms {
				t.Run(idiom.name, func(t *testing.T) {
					t.Parallel()
					testLeaseFromScript(t, sh.name, sh.argv, idiom.line, idiom.pipe)
				})
			}
		})
	}
}

func testLeaseFromScript(t *testing.T, shell string, argv []string, line string, pipe bool) {
	dir := t.TempDir()
	env := leaseScriptEnv(dir)
	repo := filepath.Join(dir, "repo")
	run := func(want int, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = repo, env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		got := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			got = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
		}
		if got != want {
			t.Fatalf("%s %s: exit %d, want %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), got, want, out.String(), errb.String())
		}
		return out.String() + errb.String()
	}
	if err := os.Mkdir(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	run(0, "git", "init", "-q", "-b", "main")
	run(0, "git", "commit", "-q", "--allow-empty", "-m", "base")
	run(0, "git", "checkout", "-q", "-b", "feat")
	run(0, "git", "commit", "-q", "--allow-empty", "-m", "on feat")
	run(0, "git", "checkout", "-q", "main")
	run(0, "orch-hooks", "init")

	// The script takes the lease, tells the test its pid and token, and
	// waits for the end of its input.
	script := filepath.Join(dir, "take.sh")
	body := "cd " + shQuote(repo) + "\n" + line + "\necho \"$$ ${t:-}\"\nread x || :\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], append(argv[1:], script)...)
	cmd.Env = env
	p := testproc.StartCommand(t, cmd)
	said, err := p.Out.ReadString('\n')
	if err != nil {
		t.Fatalf("script: %v", err)
	}
	var pid int
	var token string
	fmt.Sscan(said, &pid, &token)
	if pid != p.Pid() {
		t.Fatalf("script said %q; its pid is %d", said, p.Pid())
	}

	l := leaseOf(t, run(0, "orch-hooks", "lease", "status", "--json"))
	if l.PID != pid || l.Stale {
		t.Fatalf("%s: lease owner pid %d stale %v; want the script's pid %d, held", line, l.PID, l.Stale, pid)
	}
	switch {
	case !pipe || shell == "zsh":
		if token != fmt.Sprint(l.Token) {
			t.Fatalf("the script got token %q, the lease has %d", token, l.Token)
		}
	case token != "":
		// bash, dash and sh run a pipeline's last element in a subshell:
		// t is set there and lost (README "Merging": use $(...)).
		t.Fatalf("%s set t=%q in the script; the README says it does not", shell, token)
	}
	run(0, "orch-hooks", "reap")
	out := run(3, "orch-hooks", "merge", "--branch", "feat", "--wait", "0s")
	if !strings.Contains(out, "lease is held") {
		t.Fatalf("merge while the script holds the lease: %s", out)
	}

	if err := p.Close(); err != nil {
		t.Fatalf("script: %v", err)
	}
	if l := leaseOf(t, run(0, "orch-hooks", "lease", "status", "--json")); l.PID != pid || !l.Stale {
		t.Fatalf("after the script ended: lease owner pid %d stale %v, want %d stale", l.PID, l.Stale, pid)
	}
	if out := run(0, "orch-hooks", "merge", "--branch", "feat", "--wait", "0s"); !strings.Contains(out, "main fast-forwarded") {
		t.Fatalf("merge after the script ended: %s", out)
	}
}

// leaseOf is the one lease of lease status --json.
func leaseOf(t *testing.T, out string) leaseJSON {
	t.Helper()
	var st struct{ Leases []leaseJSON }
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Leases) != 1 {
		t.Fatalf("lease status --json: %v, want one lease: %s", err, out)
	}
	return st.Leases[0]
}

// leaseScriptEnv is the environment of a script run by a Go test: this one's
// (orch-hooks on PATH), with a private HOME and git identity and no ORCH_*
// or GIT_* variables from outside.
func leaseScriptEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ORCH_") && !strings.HasPrefix(kv, "GIT_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env, "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Orch Test", "GIT_AUTHOR_EMAIL=orch-test@example.com",
		"GIT_COMMITTER_NAME=Orch Test", "GIT_COMMITTER_EMAIL=orch-test@example.com")
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
