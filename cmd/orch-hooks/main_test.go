package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary act as orch-hooks: testscript puts a copy of
// it named orch-hooks on the PATH of every script, and a run under that name
// executes Main instead of the tests.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"orch-hooks": func() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) },
		// "faultgit install DIR" puts a fault-injecting git in DIR
		// (merge_* scripts); that git runs this command.
		"faultgit": func() { os.Exit(faultgit.Main()) },
		// "ttyexec PROGRAM [ARGS...]" runs PROGRAM with its stdout on a
		// terminal and copies what the terminal received to stdout.
		"ttyexec": func() { os.Exit(ttyExec(os.Args[1:])) },
	})
}

// ttyExec runs args[0] with stdout on a new pseudo-terminal (output
// post-processing off, so the bytes are the program's own) and copies what
// the terminal received to its own stdout. It returns the program's exit
// status.
func ttyExec(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: ttyexec PROGRAM [ARGS...]")
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "ttyexec: %v\n", err)
		return 2
	}
	master, slave, err := openPTY()
	if err != nil {
		return fail(err)
	}
	defer master.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, slave, os.Stderr
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	slave.Close()
	copied := make(chan struct{})
	go func() {
		// Ends with EIO once the program (the last holder of the slave)
		// has exited.
		io.Copy(os.Stdout, master)
		close(copied)
	}()
	err = cmd.Wait()
	<-copied
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return fail(err)
	}
	return 0
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
		Cmds: scriptCmds(),
	})
}

func scriptCmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	return map[string]func(ts *testscript.TestScript, neg bool, args []string){
		"exitcode": cmdExitCode,
		"capture":  cmdCapture,
		// Polling for a file, a status or a process, never fixed sleeps.
		"waitfile":   cmdWaitFile,
		"waitgrep":   cmdWaitGrep,
		"waitstatus": cmdWaitStatus,
		"waitjob":    cmdWaitJob,
		"pidgone":    cmdPIDGone,
		// Makes a zombie job for real (hooks_*, watch_* scripts).
		"killjob": cmdKillJob,
		// Kills a running job's monitor alone; its command lives on.
		"killmonitor": cmdKillMonitor,
		// Builds a repository in one of git's layouts (layout scripts).
		"mklayout": cmdMkLayout,
		// Writes README's CI recipe for a forge as a script (ci_* scripts).
		"cirecipe": cmdCIRecipe,
	}
}

// Layouts are the repository shapes of DESIGN.md "Real repositories"
// (mklayout builds each): the scripts of testdata/layout run once in each.
var Layouts = []string{"normal", "linked", "separate-git-dir", "submodule", "git-symlink", "bare"}

// TestLayouts runs the scripts of testdata/layout once per repository
// layout, with LAYOUT set to its name: the whole pipeline in every shape a
// repository can take.
func TestLayouts(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not found on PATH")
	}
	example, err := filepath.Abs("../../orch.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, layout := range Layouts {
		t.Run(layout, func(t *testing.T) {
			testscript.Run(t, testscript.Params{
				Dir:                 "../../testdata/layout",
				RequireExplicitExec: true,
				Setup: func(env *testscript.Env) error {
					env.Setenv("LAYOUT", layout)
					return setupGit(env, example)
				},
				Cmds: scriptCmds(),
			})
		})
	}
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
	// A script that fails while a job of its own runs would otherwise hang:
	// testscript then waits for its background commands' output, which the
	// job's processes hold open. Deferred work runs before that wait.
	env.Defer(func() { stopScriptJobs(env.WorkDir) })

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

// waitPoll and waitLimit pace the wait* commands: they poll, they never
// sleep a fixed time in the hope that something has happened.
const (
	waitPoll  = 10 * time.Millisecond
	waitLimit = 30 * time.Second
)

// pollUntil calls ok every waitPoll until it returns true or waitLimit has
// passed; it reports whether ok returned true.
func pollUntil(ok func() bool) bool {
	deadline := time.Now().Add(waitLimit)
	for {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(waitPoll)
	}
}

// cmdWaitFile runs "waitfile PATH": it waits until PATH exists.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile PATH")
	}
	path := ts.MkAbs(args[0])
	if !pollUntil(func() bool { _, err := os.Stat(path); return err == nil }) {
		ts.Fatalf("waitfile: %s did not appear within %s", path, waitLimit)
	}
}

// cmdWaitGrep runs "waitgrep [-count=N] PATTERN FILE": it waits until at
// least N (default 1) lines of FILE match the regular expression PATTERN
// (e.g. a line a background watch printed).
func cmdWaitGrep(ts *testscript.TestScript, neg bool, args []string) {
	n := 1
	if len(args) == 3 && strings.HasPrefix(args[0], "-count=") {
		var err error
		if n, err = strconv.Atoi(strings.TrimPrefix(args[0], "-count=")); err != nil || n < 1 {
			ts.Fatalf("waitgrep: bad %s", args[0])
		}
		args = args[1:]
	}
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitgrep [-count=N] PATTERN FILE")
	}
	re, err := regexp.Compile("(?m)" + args[0])
	if err != nil {
		ts.Fatalf("waitgrep: %v", err)
	}
	path := ts.MkAbs(args[1])
	var last []byte
	if !pollUntil(func() bool {
		last, _ = os.ReadFile(path)
		return len(re.FindAllIndex(last, -1)) >= n
	}) {
		ts.Fatalf("waitgrep: %d line(s) matching %q did not appear in %s within %s; it holds:\n%s", n, args[0], path, waitLimit, last)
	}
}

// cmdWaitStatus runs "waitstatus JOB STATUS": it waits until the record of
// JOB (.git/orch/jobs/JOB.toml under the current directory) has STATUS.
// For running it also waits until the process doing the job's current work
// is stamped — the command, or once the command's exit is recorded, the
// finalize step — so that whoever stops the job can find it; for an ended
// status, until the job's monitor and its process groups are gone, so that
// nothing the job started outlives the script.
func cmdWaitStatus(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitstatus JOB STATUS")
	}
	waitJob(ts, ts.MkAbs(filepath.Join(".git", "orch", "jobs", args[0]+".toml")), args[0], args[1])
}

// waitJob waits until the record at path has status (see waitstatus).
func waitJob(ts *testscript.TestScript, path, id, status string) {
	want := gitstate.Status(status)
	var last string
	ok := pollUntil(func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			last = err.Error()
			return false
		}
		j, err := gitstate.DecodeJob(data)
		if err != nil {
			last = err.Error()
			return false
		}
		last = "status " + string(j.Status)
		if j.Status != want && j.Status.Terminal() {
			// An ended job never changes status again: no use waiting.
			last += " (" + j.Reason + ")"
			return true
		}
		switch {
		case j.Status != want:
			return false
		case want == gitstate.Running && j.Command.IsZero():
			last += ", command not stamped yet"
			return false
		case want == gitstate.Running && j.ExitCode != nil && j.Finalizer.IsZero():
			last += ", exit code recorded, finalize step not stamped yet"
			return false
		case want.Terminal():
			if l, _ := procid.Check(j.Monitor); l == procid.Alive {
				last += fmt.Sprintf(", monitor %d still alive", j.Monitor.PID)
				return false
			}
			for _, g := range []procid.Identity{j.Command, j.Finalizer} {
				if l, _ := procid.GroupLiveness(g); l == procid.Alive {
					last += fmt.Sprintf(", process group %d still alive", g.PID)
					return false
				}
			}
		}
		return true
	})
	if !ok {
		ts.Fatalf("wait for %s %s: gave up after %s (%s)", id, want, waitLimit, last)
	}
	if !strings.HasPrefix(last, "status "+string(want)) {
		ts.Fatalf("wait for %s %s: it ended %s", id, want, last)
	}
}

// cmdWaitJob runs "waitjob JOB STATUS": waitstatus for a repository of
// any layout, its state dir found by git (rev-parse --git-common-dir in the
// current directory) rather than at .git/orch.
func cmdWaitJob(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitjob JOB STATUS")
	}
	cmd := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir")
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = scriptEnv(ts)
	out, err := cmd.Output()
	if err != nil {
		ts.Fatalf("waitjob: git rev-parse --git-common-dir: %v", err)
	}
	waitJob(ts, filepath.Join(strings.TrimSpace(string(out)), "orch", "jobs", args[0]+".toml"), args[0], args[1])
}

// scriptEnv is the environment of the script's own commands.
func scriptEnv(ts *testscript.TestScript) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "TZ",
		"GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"} {
		env = append(env, k+"="+ts.Getenv(k))
	}
	return env
}

// cmdMkLayout runs "mklayout LAYOUT CONFIG": it builds, under $WORK, a
// repository in LAYOUT (one of Layouts) whose main branch has one commit
// with CONFIG as orch.toml, and sets MAIN (the top of the worktree that has
// main checked out), FROM (where the script runs orch-hooks) and COMMON
// (the common git dir):
//
//   - normal: git init;
//   - linked: main checked out in a linked worktree (FROM), the main
//     worktree on another branch;
//   - separate-git-dir: git init --separate-git-dir;
//   - submodule: the repository added as a submodule of another, used
//     inside the submodule;
//   - git-symlink: .git a symlink to a git dir named otherwise;
//   - bare: git clone --bare, then git worktree add for main.
func cmdMkLayout(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: mklayout LAYOUT CONFIG")
	}
	work := ts.Getenv("WORK")
	config := ts.ReadFile(args[1])
	git := func(dir string, args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = scriptEnv(ts)
		if out, err := cmd.CombinedOutput(); err != nil {
			ts.Fatalf("mklayout: git %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
		}
	}
	seed := func(dir string) {
		ts.Check(os.WriteFile(filepath.Join(dir, "orch.toml"), []byte(config), 0o644))
		git(dir, "add", "orch.toml")
		git(dir, "commit", "-q", "-m", "seed")
	}
	mkdir := func(dir string) string {
		ts.Check(os.MkdirAll(dir, 0o755))
		return dir
	}
	repo := filepath.Join(work, "repo")
	main, from, common := repo, repo, filepath.Join(repo, ".git")
	switch args[0] {
	case "normal":
		git(work, "init", "-q", repo)
		seed(repo)
	case "linked":
		git(work, "init", "-q", repo)
		seed(repo)
		git(repo, "checkout", "-q", "-b", "base")
		main = filepath.Join(work, "wt")
		from = main
		git(repo, "worktree", "add", "-q", main, "main")
	case "separate-git-dir":
		common = filepath.Join(mkdir(filepath.Join(work, "store")), "repo.gitdir")
		git(work, "init", "-q", "--separate-git-dir", common, repo)
		seed(repo)
	case "submodule":
		src := filepath.Join(work, "src")
		git(work, "init", "-q", src)
		seed(src)
		outer := filepath.Join(work, "outer")
		git(work, "init", "-q", outer)
		git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "-b", "main", src, "sub")
		git(outer, "commit", "-q", "-m", "add sub")
		main, from, common = filepath.Join(outer, "sub"), filepath.Join(outer, "sub"), filepath.Join(outer, ".git", "modules", "sub")
	case "git-symlink":
		common = filepath.Join(mkdir(filepath.Join(work, "store")), "repo.gitdir")
		git(work, "init", "-q", "--bare", common)
		mkdir(repo)
		ts.Check(os.Symlink(common, filepath.Join(repo, ".git")))
		git(repo, "config", "core.bare", "false")
		seed(repo)
	case "bare":
		src := filepath.Join(work, "src")
		git(work, "init", "-q", src)
		seed(src)
		common = filepath.Join(work, "repo.git")
		git(work, "clone", "-q", "--bare", src, common)
		main = filepath.Join(work, "main")
		from = main
		git(common, "worktree", "add", "-q", main, "main")
	default:
		ts.Fatalf("mklayout: unknown layout %q (want one of %s)", args[0], strings.Join(Layouts, ", "))
	}
	ts.Setenv("MAIN", main)
	ts.Setenv("FROM", from)
	ts.Setenv("COMMON", common)
}

// cmdPIDGone runs "pidgone FILE": the process whose pid FILE holds has
// exited (no /proc entry, or a zombie). "! pidgone FILE": it is running.
// It looks once; it does not wait.
func cmdPIDGone(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: [!] pidgone FILE")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(ts.ReadFile(args[0])))
	if err != nil {
		ts.Fatalf("pidgone: %s: %v", args[0], err)
	}
	st, err := procid.ReadStat(pid)
	gone := errors.Is(err, procid.ErrNoProcess) || (err == nil && (st.State == 'Z' || st.State == 'X'))
	if err != nil && !gone {
		ts.Fatalf("pidgone: %v", err)
	}
	switch {
	case gone && neg:
		ts.Fatalf("process %d has exited, want it running", pid)
	case !gone && !neg:
		ts.Fatalf("process %d is still running (state %c)", pid, st.State)
	}
}

// cmdKillJob runs "killjob JOB": it SIGKILLs the monitor of running JOB
// (.git/orch/jobs/JOB.toml under the current directory) and the process
// groups of its command and finalize step, each confirmed by identity
// first, and waits until all of them are dead: the job is left running
// with nothing behind it, as after an OOM kill or a reboot.
func cmdKillJob(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: killjob JOB")
	}
	data, err := os.ReadFile(ts.MkAbs(filepath.Join(".git", "orch", "jobs", args[0]+".toml")))
	ts.Check(err)
	j, err := gitstate.DecodeJob(data)
	ts.Check(err)
	if j.Status != gitstate.Running {
		ts.Fatalf("killjob: %s is %s, not running", j.ID, j.Status)
	}
	_, err = procid.Signal(j.Monitor, syscall.SIGKILL)
	ts.Check(err)
	for _, g := range []procid.Identity{j.Command, j.Finalizer} {
		_, err := procid.SignalGroup(g, syscall.SIGKILL)
		ts.Check(err)
	}
	ok := pollUntil(func() bool {
		if l, _ := procid.Check(j.Monitor); l == procid.Alive {
			return false
		}
		for _, g := range []procid.Identity{j.Command, j.Finalizer} {
			if l, _ := procid.GroupLiveness(g); l == procid.Alive {
				return false
			}
		}
		return true
	})
	if !ok {
		ts.Fatalf("killjob %s: processes still alive after %s", j.ID, waitLimit)
	}
}

// killmonitor JOB kills the monitor of running job JOB, and only it, by
// the identity its record holds (checked alive first: the monitor is a
// child of the script, so its pid cannot be reused before the script's
// wait), and waits until it is dead. The job's command is left running.
func cmdKillMonitor(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: killmonitor JOB")
	}
	data, err := os.ReadFile(ts.MkAbs(filepath.Join(".git", "orch", "jobs", args[0]+".toml")))
	ts.Check(err)
	j, err := gitstate.DecodeJob(data)
	ts.Check(err)
	if j.Status != gitstate.Running {
		ts.Fatalf("killmonitor: %s is %s, not running", j.ID, j.Status)
	}
	if l, err := procid.Check(j.Monitor); l != procid.Alive {
		ts.Fatalf("killmonitor: the monitor of %s (%s) is %s (%v), not alive", j.ID, j.Monitor, l, err)
	}
	if ok, err := procid.Signal(j.Monitor, syscall.SIGKILL); !ok {
		ts.Fatalf("killmonitor: the monitor of %s (%s) was not signalled: %v", j.ID, j.Monitor, err)
	}
	if !pollUntil(func() bool { l, _ := procid.Check(j.Monitor); return l != procid.Alive }) {
		ts.Fatalf("killmonitor %s: monitor still alive after %s", j.ID, waitLimit)
	}
}

// stopScriptJobs kills what the running jobs of every state dir under dir
// still have alive: each monitor, then each job's process groups, all
// confirmed by the identity their record holds (a recycled pid is never
// signalled). These are processes the script started; nothing else is.
func stopScriptJobs(dir string) {
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || d.Name() != "running" || filepath.Base(filepath.Dir(path)) != "orch" {
			return nil
		}
		entries, _ := os.ReadDir(path)
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(filepath.Dir(path), "jobs", e.Name()+".toml"))
			if err != nil {
				continue
			}
			j, err := gitstate.DecodeJob(data)
			if err != nil || j.Status != gitstate.Running {
				continue
			}
			_, _ = procid.Signal(j.Monitor, syscall.SIGKILL)
			_ = pipeline.StopGroups(j, 0)
		}
		return filepath.SkipDir
	})
}
