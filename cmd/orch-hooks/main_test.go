package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary act as orch-hooks: testscript puts a copy of
// it named orch-hooks on the PATH of every script, and a run under that name
// executes Main instead of the tests.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"orch-hooks": func() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the end-to-end scripts in testdata/script against the
// real binary and real git.
func TestScripts(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not found on PATH")
	}
	example, err := filepath.Abs("../../orch.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	// A value no script expects: if an ORCH_* variable of the outer
	// environment reached a script, every enqueue would fail.
	t.Setenv("ORCH_REAPER_DEAD_TICKS", "leaked-from-outer-env")
	testscript.Run(t, testscript.Params{
		Dir:                 "../../testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			return setupGit(env, example)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"capture":  cmdCapture,
		},
	})
}

// setupGit gives each script a private, deterministic git: its own HOME with
// a .gitconfig (default branch main, a fixed identity), no system config,
// and no ORCH_* or GIT_* variables from outside.
func setupGit(env *testscript.Env, example string) error {
	vars := env.Vars[:0]
	for _, kv := range env.Vars {
		if strings.HasPrefix(kv, "ORCH_") || strings.HasPrefix(kv, "GIT_") {
			continue
		}
		vars = append(vars, kv)
	}
	env.Vars = vars

	home := filepath.Join(env.WorkDir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	gitconfig := "[init]\n\tdefaultBranch = main\n" +
		"[user]\n\tname = Orch Test\n\temail = orch-test@example.com\n" +
		"[advice]\n\tdetachedHead = false\n"
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gitconfig), 0o644); err != nil {
		return err
	}
	for k, v := range map[string]string{
		"HOME":                home,
		"XDG_CONFIG_HOME":     filepath.Join(home, ".config"),
		"GIT_CONFIG_NOSYSTEM": "1",
		"GIT_AUTHOR_NAME":     "Orch Test",
		"GIT_AUTHOR_EMAIL":    "orch-test@example.com",
		"GIT_COMMITTER_NAME":  "Orch Test",
		"GIT_COMMITTER_EMAIL": "orch-test@example.com",
		"TZ":                  "UTC",
		// For scripts: the example config init writes, and a control
		// character (ESC) to build hostile names with.
		"EXAMPLE_TOML": example,
		"ESC":          "\x1b",
	} {
		setenv(env, k, v)
	}
	// Under -race every run of orch-hooks would wait 1s at exit for late
	// race reports; 10ms is what go-internal suggests.
	if os.Getenv("GORACE") == "" {
		setenv(env, "GORACE", "atexit_sleep_ms=10")
	}
	return nil
}

// setenv sets key, replacing an earlier value rather than adding a second.
func setenv(env *testscript.Env, key, value string) {
	for i, kv := range env.Vars {
		if strings.HasPrefix(kv, key+"=") {
			env.Vars[i] = key + "=" + value
			return
		}
	}
	env.Setenv(key, value)
}

// cmdExitCode runs "exitcode N PROGRAM [ARGS...]": PROGRAM must exit with
// status N. Its stdout and stderr are kept for the stdout and stderr
// commands that follow, as with exec.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! exitcode (give the code expected)")
	}
	if len(args) < 2 {
		ts.Fatalf("usage: exitcode N program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: bad code %q", args[0])
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		got = ee.ExitCode()
	default:
		ts.Fatalf("exitcode: %v", err)
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

// cmdCapture runs "capture NAME": NAME is set to the stdout of the last
// command, without surrounding white space (e.g. the id enqueue printed).
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: capture NAME")
	}
	v := strings.TrimSpace(ts.ReadFile("stdout"))
	if v == "" {
		ts.Fatalf("capture %s: stdout is empty", args[0])
	}
	ts.Setenv(args[0], v)
}
