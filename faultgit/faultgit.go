// Package faultgit is a test facility: a `git` placed first on PATH that
// runs the real git except where the environment tells it to misbehave, so
// tests can make a named git subcommand fail, hold a worktree's index.lock
// around it, stop it at a point the test controls, or delay it.
//
// orch-hooks starts git by name ("git", looked up on PATH: gitstate.Git),
// so every git process it starts goes through the wrapper. The wrapper is a
// small shell script, written by Install, that runs a program calling Main:
// the test binary itself (its TestMain calls Main when Invoked), or a
// testscript command named "faultgit". The real git is the one Install
// found on PATH, by absolute path: no PATH recursion.
//
// # Rules
//
// ORCH_FAULTGIT holds rules separated by ';':
//
//	RULE   = MATCH ':' ACTION
//	MATCH  = SUBCMD | SUBCMD '#' K | '*' | '*#' K
//	ACTION = 'fail' | 'fail=' CODE | 'fail-after' | 'delay=' DURATION
//	       | 'hold-index-lock' | 'pause=' NAME
//
// SUBCMD is git's subcommand (the first argument that is not a global
// option: `git -C d update-ref ...` is update-ref); '*' is every git
// invocation. '#K' matches only the K-th invocation (1-based) of SUBCMD
// (or of any subcommand, for '*'), counted across every process sharing
// the state dir. Every rule that matches applies, in order.
//
//   - fail[=CODE]: exit CODE (default 128, git's fatal status) without
//     running git, saying "faultgit: injected failure" on stderr.
//   - fail-after: run git, then exit 128 whatever it did (the effect
//     happened, its report was lost).
//   - delay=D: sleep D (a Go duration) before running git.
//   - hold-index-lock: create the current worktree's index.lock the way
//     git does (O_CREAT|O_EXCL) before running git and delete it after, as
//     an editor's `git status` does; if it exists already, exit 128 as git
//     would.
//   - pause=NAME: create NAME.paused in the state dir, then wait until
//     NAME.resume exists there (Resume), then run git: a test stops the
//     command at a point it knows, acts, and lets it go.
//
// # Use
//
// In a test package:
//
//	func TestMain(m *testing.M) {
//		if faultgit.Invoked() {
//			os.Exit(faultgit.Main()) // this binary started as git
//		}
//		os.Exit(m.Run())
//	}
//
//	path, err := faultgit.InstallSelf(t.TempDir())
//	cmd.Env = append(cmd.Env, "PATH="+path, faultgit.EnvRules+"=*#3:fail")
//
// A crash matrix axis "git invocation k fails": run the scenario once with
// no rules and count Log's lines (n), then for k in 1..n run it with
// "*#k:fail" and a fresh dir each time. In a testscript, register Main as
// the command "faultgit" and run `exec faultgit install DIR`, which prints
// the PATH to use.
//
// ORCH_FAULTGIT_DIR is the state dir (counters, the log, pause files);
// Install's script sets it to DIR/state unless the environment has one.
// Every invocation is appended to its "log" file as "N\tSUBCMD\targs...",
// N counting every invocation.
package faultgit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// Environment variables.
const (
	// EnvRules holds the rules (see the package doc).
	EnvRules = "ORCH_FAULTGIT"
	// EnvDir is the state dir: counters, log, pause files.
	EnvDir = "ORCH_FAULTGIT_DIR"
	// envReal is the real git's absolute path, set by the wrapper script.
	envReal = "ORCH_FAULTGIT_REAL"
	// envWrapper marks a program run by the wrapper script.
	envWrapper = "ORCH_FAULTGIT_WRAPPER"
)

// Install writes the wrapper into dir as dir/git, running exe (an absolute
// path, or a bare name looked up on PATH, e.g. a testscript command) with
// git's arguments, and returns the PATH to use: dir first, then the
// current PATH. The real git is the one found on the current PATH now.
// The state dir defaults to dir/state.
func Install(dir, exe string) (path string, err error) {
	real, err := exec.LookPath("git")
	if err != nil {
		return "", fmt.Errorf("faultgit: the real git: %w", err)
	}
	if real, err = filepath.Abs(real); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o755); err != nil {
		return "", err
	}
	script := "#!/bin/sh\n" +
		"if [ -z \"${" + EnvDir + "-}\" ]; then " + EnvDir + "=" + shellQuote(filepath.Join(dir, "state")) + "; fi\n" +
		"export " + EnvDir + "\n" +
		envWrapper + "=1 " + envReal + "=" + shellQuote(real) + " exec " + shellQuote(exe) + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "git"), []byte(script), 0o755); err != nil {
		return "", err
	}
	return dir + string(os.PathListSeparator) + os.Getenv("PATH"), nil
}

// InstallSelf is Install with the running executable (a test binary whose
// TestMain calls Main when Invoked) as the program.
func InstallSelf(dir string) (path string, err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return Install(dir, exe)
}

// Invoked reports whether this process was started by the wrapper script:
// a TestMain calls os.Exit(faultgit.Main()) then.
func Invoked() bool { return os.Getenv(envWrapper) == "1" }

// Log returns the invocations recorded in the state dir, one
// "N\tSUBCMD\targs" line each.
func Log(stateDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n"), nil
}

// Paused reports whether a pause=NAME rule has stopped a git command.
func Paused(stateDir, name string) bool {
	_, err := os.Stat(filepath.Join(stateDir, name+".paused"))
	return err == nil
}

// Resume lets the git commands stopped (now or later) by pause=NAME go on.
func Resume(stateDir, name string) error {
	return os.WriteFile(filepath.Join(stateDir, name+".resume"), nil, 0o644)
}

// Rule is one parsed rule of ORCH_FAULTGIT.
type Rule struct {
	sub    string // "*" for any
	nth    int    // 0: every invocation
	action string
	arg    string
}

// Parse parses rules in ORCH_FAULTGIT's syntax.
func Parse(spec string) ([]Rule, error) {
	var rules []Rule
	for _, part := range strings.Split(spec, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		match, action, ok := strings.Cut(part, ":")
		if !ok || match == "" {
			return nil, fmt.Errorf("faultgit: rule %q: want MATCH:ACTION", part)
		}
		var r Rule
		r.sub = match
		if s, k, ok := strings.Cut(match, "#"); ok {
			n, err := strconv.Atoi(k)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("faultgit: rule %q: #%s is not a positive count", part, k)
			}
			r.sub, r.nth = s, n
		}
		r.action, r.arg, _ = strings.Cut(action, "=")
		switch r.action {
		case "fail":
			if r.arg != "" {
				if n, err := strconv.Atoi(r.arg); err != nil || n < 1 || n > 255 {
					return nil, fmt.Errorf("faultgit: rule %q: exit code %q", part, r.arg)
				}
			}
		case "delay":
			if _, err := time.ParseDuration(r.arg); err != nil {
				return nil, fmt.Errorf("faultgit: rule %q: %v", part, err)
			}
		case "pause":
			if r.arg == "" || strings.ContainsAny(r.arg, "/\x00") {
				return nil, fmt.Errorf("faultgit: rule %q: pause needs a plain NAME", part)
			}
		case "fail-after", "hold-index-lock":
		default:
			return nil, fmt.Errorf("faultgit: rule %q: unknown action %q", part, r.action)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// Subcommand returns git's subcommand in args, skipping global options
// ("" when there is none).
func Subcommand(args []string) string {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-C" || a == "-c" || a == "--git-dir" || a == "--work-tree" || a == "--namespace" || a == "--config-env":
			i++ // the option's value
		case strings.HasPrefix(a, "-"):
		default:
			return a
		}
	}
	return ""
}

// Main is the wrapper: it applies the rules of ORCH_FAULTGIT to this git
// invocation (os.Args[1:]) and runs the real git; it returns the exit
// status to exit with. Not started by the wrapper script, Main is a
// command for scripts: `faultgit install DIR` installs the wrapper into
// DIR running the program "faultgit" found on PATH (a testscript command
// calling Main) and prints the PATH to use.
func Main() int {
	args := os.Args[1:]
	if !Invoked() {
		if len(args) != 2 || args[0] != "install" {
			fmt.Fprintln(os.Stderr, "usage: faultgit install DIR (prints the PATH to use)")
			return 2
		}
		path, err := Install(args[1], "faultgit")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(path)
		return 0
	}
	real := os.Getenv(envReal)
	if real == "" {
		fmt.Fprintln(os.Stderr, "faultgit: "+envReal+" is not set: run through the script Install writes")
		return 128
	}
	rules, err := Parse(os.Getenv(EnvRules))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 128
	}
	// The real git and what it starts see a plain environment.
	os.Unsetenv(envWrapper)
	os.Unsetenv(envReal)
	sub := Subcommand(args)
	dir := os.Getenv(EnvDir)
	var nSub, nAll int
	if dir != "" {
		if nSub, nAll, err = count(dir, sub, args); err != nil {
			fmt.Fprintln(os.Stderr, "faultgit:", err)
			return 128
		}
	}
	var after []func()
	failAfter := false
	for _, r := range rules {
		switch {
		case r.sub == "*" && (r.nth == 0 || r.nth == nAll):
		case r.sub == sub && (r.nth == 0 || r.nth == nSub):
		default:
			continue
		}
		switch r.action {
		case "fail":
			code := 128
			if r.arg != "" {
				code, _ = strconv.Atoi(r.arg)
			}
			fmt.Fprintf(os.Stderr, "faultgit: injected failure of git %s (invocation %d)\n", sub, nSub)
			return code
		case "fail-after":
			failAfter = true
		case "delay":
			d, _ := time.ParseDuration(r.arg)
			time.Sleep(d)
		case "pause":
			if err := pause(dir, r.arg); err != nil {
				fmt.Fprintln(os.Stderr, "faultgit:", err)
				return 128
			}
		case "hold-index-lock":
			release, err := holdIndexLock(real)
			if err != nil {
				fmt.Fprintln(os.Stderr, "faultgit:", err)
				return 128
			}
			after = append(after, release)
		}
	}
	if !failAfter && len(after) == 0 {
		err := syscall.Exec(real, append([]string{"git"}, args...), os.Environ())
		fmt.Fprintln(os.Stderr, "faultgit: exec", real+":", err)
		return 128
	}
	code := run(real, args)
	for _, f := range after {
		f()
	}
	if failAfter {
		fmt.Fprintf(os.Stderr, "faultgit: injected failure after git %s ran (exit %d)\n", sub, code)
		return 128
	}
	return code
}

// run runs the real git as a child, passing on signals, and returns its
// exit status (128+signal when killed).
func run(real string, args []string) int {
	cmd := exec.Command(real, args...)
	cmd.Args[0] = "git"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "faultgit:", err)
		return 128
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return 128
	}
	return 0
}

// count adds this invocation to the counters and the log, under a lock on
// the state dir, and returns its number among sub's and among all.
func count(dir, sub string, args []string) (nSub, nAll int, err error) {
	// statefile.Lock, the one lock primitive: it waits with a deadline
	// (LockTimeoutDefault), where a blocking flock(2) would hang every git
	// of a test behind one that stopped holding it.
	unlock, err := statefile.Lock(context.Background(), filepath.Join(dir, "lock"))
	if err != nil {
		return 0, 0, err
	}
	defer unlock()
	bump := func(name string) (int, error) {
		p := filepath.Join(dir, "count-"+name)
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		n++
		return n, os.WriteFile(p, []byte(strconv.Itoa(n)+"\n"), 0o644)
	}
	key := sub
	if key == "" || strings.ContainsAny(key, "/\x00") {
		key = "-"
	}
	if nSub, err = bump("sub-" + key); err != nil {
		return 0, 0, err
	}
	if nAll, err = bump("all"); err != nil {
		return 0, 0, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%d\t%s\t%s\n", nAll, sub, strings.Join(args, " "))
	return nSub, nAll, err
}

// pause announces NAME.paused and waits for NAME.resume. A file is the
// synchronisation: the test may be in another process.
func pause(dir, name string) error {
	if dir == "" {
		return errors.New("pause needs " + EnvDir)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".paused"), nil, 0o644); err != nil {
		return err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, name+".resume")); err == nil {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// holdIndexLock takes the index.lock of the worktree git is run in, as
// git does, and returns its release.
func holdIndexLock(real string) (func(), error) {
	out, err := exec.Command(real, "rev-parse", "--absolute-git-dir").Output()
	if err != nil {
		return nil, fmt.Errorf("hold-index-lock: git rev-parse --absolute-git-dir: %w", err)
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "index.lock")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, fmt.Errorf("hold-index-lock: Unable to create '%s': %w", path, err)
	}
	f.Close()
	return func() { os.Remove(path) }, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
