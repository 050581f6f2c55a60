// Package crashmatrix holds only tests: the crash-point matrix, the
// concurrency stress test and the hostile-input table of docs/RELIABILITY.md.
// Every process that may crash is a real process: this test binary re-exec'd
// in a helper mode (CM_HELPER), with ORCH_CRASHPOINT armed.
package crashmatrix_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// Helper modes and their parameters.
const (
	helperEnv = "CM_HELPER" // monitor | merge | lease | reap | monitorloop | reaploop | mergeloop
	repoEnv   = "CM_REPO"
	jobEnv    = "CM_JOB"
	branchEnv = "CM_BRANCH"
	remoteEnv = "CM_REMOTE"
	opEnv     = "CM_OP"
	seedEnv   = "CM_SEED"
	cliEnv    = "CM_CLI" // the orch-hooks binary a reaploop helper starts adopters with
)

func TestMain(m *testing.M) {
	if faultgit.Invoked() {
		os.Exit(faultgit.Main()) // this binary started as git (gitfault_test.go)
	}
	mode := os.Getenv(helperEnv)
	if mode == "" {
		os.Exit(runTests(m))
	}
	var code int
	switch mode {
	case "monitor":
		code = monitorHelper()
	case "merge":
		code = mergeHelper()
	case "lease":
		code = leaseHelper()
	case "reap":
		code = reapHelper()
	case "monitorloop":
		code = monitorLoopHelper()
	case "reaploop":
		code = reapLoopHelper()
	case "mergeloop":
		code = mergeLoopHelper()
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, mode)
		code = 2
	}
	os.Exit(code)
}

// runTests gives the tests (and every helper they start, which inherits the
// environment) a private, deterministic git environment.
func runTests(m *testing.M) int {
	// The go build below keeps the caller's environment: with the private
	// HOME it would rebuild everything in an empty cache and download every
	// module again.
	buildEnv = os.Environ()
	home, err := os.MkdirTemp("", "crashmatrix-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(home)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_") || strings.HasPrefix(k, "ORCH_") {
			os.Unsetenv(k)
		}
	}
	for k, v := range map[string]string{
		"HOME": home, "XDG_CONFIG_HOME": filepath.Join(home, ".config"), "GIT_CONFIG_NOSYSTEM": "1",
		"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
		"GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
		"ORCH_HOOKS": "0",
	} {
		os.Setenv(k, v)
	}
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=10")
	}
	// The binary the hostile tests drive is built while the other tests run.
	go cliBuild()
	code := m.Run()
	cliOnce.Do(func() {}) // wait for a build in flight
	if cliDir != "" {
		os.RemoveAll(cliDir)
	}
	return code
}

// cli builds the orch-hooks binary once per test binary run.
var (
	buildEnv []string
	cliOnce  sync.Once
	cliDir   string
	cliPath  string
	cliErr   error
)

func cliBuild() {
	cliOnce.Do(func() {
		cliDir, cliErr = os.MkdirTemp("", "crashmatrix-bin-")
		if cliErr != nil {
			return
		}
		cliPath = filepath.Join(cliDir, "orch-hooks")
		// Without -race even under go test -race: a race-built binary reads
		// a 20 MiB record several times slower.
		build := exec.Command("go", "build", "-o", cliPath, "github.com/orch-hooks/orch-hooks/cmd/orch-hooks")
		build.Env = buildEnv
		out, err := build.CombinedOutput()
		if err != nil {
			cliErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
}

func cliBinary(t *testing.T) string {
	t.Helper()
	cliBuild()
	if cliErr != nil {
		t.Skipf("cannot build the orch-hooks binary: %v", cliErr)
	}
	return cliPath
}

func fatal(who string, err error) int {
	fmt.Fprintf(os.Stderr, "%s helper: %v\n", who, err)
	return 1
}

// monitorHelper runs job $CM_JOB as its monitor.
func monitorHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("monitor", err)
	}
	env.Store.Actor = "monitor"
	res, err := env.Run(context.Background(), os.Getenv(jobEnv), pipeline.RunOptions{Log: os.Stderr})
	if err != nil {
		return fatal("monitor", err)
	}
	fmt.Println(res.Job.Status)
	return 0
}

// mergeHelper merges $CM_BRANCH into main (through $CM_REMOTE if set), as
// `orch-hooks merge --branch` does.
func mergeHelper() int {
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("merge", err)
	}
	br := os.Getenv(branchEnv)
	res, err := merge.New(repo).Merge(context.Background(), merge.Request{
		Branch: br, Target: "main", Job: "merge-" + gitstate.JobID(br, "m", 1), Author: fixedAuthor,
		Wait: time.Minute, Remote: os.Getenv(remoteEnv),
	})
	if err != nil {
		return fatal("merge", err)
	}
	fmt.Println(res.Kind)
	return 0
}

// fixedAuthor signs merges made outside a job, so a rebuilt merge commit
// has the same id.
var fixedAuthor = merge.Signature{Name: "Merge Bot", Email: "bot@example.invalid",
	When: time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)}

// leaseHelper: CM_OP=cycle acquires the lease of main and releases it;
// CM_OP=hold acquires it and exits holding it (its owner is then dead).
func leaseHelper() int {
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("lease", err)
	}
	self, err := procid.Self()
	if err != nil {
		return fatal("lease", err)
	}
	m := lease.Open(repo.StateDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := m.Acquire(ctx, "main", lease.Request{Holder: "crashmatrix", Owner: self, TTL: time.Hour})
	if err != nil {
		return fatal("lease", err)
	}
	if os.Getenv(opEnv) == "cycle" {
		if err := m.Release(ctx, "main", l.Token); err != nil {
			return fatal("lease", err)
		}
	}
	fmt.Println(l.Token)
	return 0
}

// passOptions is how every reaper pass of these tests runs: with the lease
// manager, so stale leases are reclaimed too.
func passOptions(env *pipeline.Env) reaper.Options {
	return reaper.Options{Leases: lease.Open(env.Store.Dir()), StopGrace: time.Second}
}

// reapHelper makes one reaper pass, as a git hook does.
func reapHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("reap", err)
	}
	env.Store.Actor = "reaper"
	if _, err := reaper.RunOnce(context.Background(), env, passOptions(env)); err != nil {
		return fatal("reap", err)
	}
	return 0
}

// reapLoopHelper makes a reaper pass for every line on stdin (lines that
// arrive during a pass are folded into one more pass), until stdin closes.
// The stress test sends a line to every reaper on each monitor event, so
// passes keep pace with the work without spinning.
func reapLoopHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("reaploop", err)
	}
	env.Store.Actor = "reaper"
	if cli := os.Getenv(cliEnv); cli != "" {
		env.Adopter = env.StartAdopter(cli, env.MonitorArgs()...)
	}
	kick := make(chan struct{}, 1)
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
		close(kick)
	}()
	passes, errs := 0, 0
	for range kick {
		snap, err := reaper.RunOnce(context.Background(), env, passOptions(env))
		passes++
		if err != nil {
			errs++
			fmt.Fprintln(os.Stderr, "reaploop:", err)
		} else if len(snap.Errors) > 0 {
			errs++
			for _, e := range snap.Errors {
				fmt.Fprintf(os.Stderr, "reaploop: pass error %+v\n", e)
			}
		}
	}
	fmt.Printf("passes %d errors %d\n", passes, errs)
	return 0
}

// monitorLoopHelper runs queued jobs, in a random order, one after the
// other, until none is left; it prints "run ID" before each, so the test
// can choose to kill it there.
func monitorLoopHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("monitorloop", err)
	}
	env.Store.Actor = "monitor"
	rng := rand.New(rand.NewSource(int64(os.Getpid())))
	out := bufio.NewWriter(os.Stdout)
	for {
		l, err := env.Store.Active()
		if err != nil {
			return fatal("monitorloop", err)
		}
		var queued []string
		for _, j := range l.Jobs {
			if j.Status == gitstate.Queued {
				queued = append(queued, j.ID)
			}
		}
		if len(queued) == 0 {
			return 0
		}
		rng.Shuffle(len(queued), func(i, j int) { queued[i], queued[j] = queued[j], queued[i] })
		for _, id := range queued {
			fmt.Fprintln(out, "run", id)
			out.Flush()
			_, err := env.Run(context.Background(), id, pipeline.RunOptions{Log: io.Discard})
			if err != nil && !errors.Is(err, pipeline.ErrNotQueued) {
				fmt.Fprintf(os.Stderr, "monitorloop: %s: %v\n", id, err)
			}
		}
	}
}

// mergeLoopHelper merges each branch listed on stdin into main, in a
// seeded random order, as a user running `orch-hooks merge --branch` would;
// a branch that does not exist yet is skipped.
func mergeLoopHelper() int {
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		return fatal("mergeloop", err)
	}
	var branches []string
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if s := strings.TrimSpace(in.Text()); s != "" {
			branches = append(branches, s)
		}
	}
	var seed int64
	fmt.Sscan(os.Getenv(seedEnv), &seed)
	rand.New(rand.NewSource(seed)).Shuffle(len(branches), func(i, j int) { branches[i], branches[j] = branches[j], branches[i] })
	m := merge.New(repo)
	for _, br := range branches {
		res, err := m.Merge(context.Background(), merge.Request{Branch: br, Target: "main", Author: fixedAuthor, Wait: 5 * time.Minute, Holder: "mergeloop"})
		if err != nil {
			fmt.Printf("skip %s %s\n", br, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("ok %s %s\n", br, res.Kind)
	}
	return 0
}

// ---- process plumbing used by the tests ----

// helperRun is a helper process run to its end or its crash.
type helperRun struct {
	pid    int
	status syscall.WaitStatus
	out    string
}

func (r helperRun) killed() bool { return r.status.Signaled() && r.status.Signal() == syscall.SIGKILL }

// runHelper runs this binary in mode with extra environment, waits for it,
// and then waits for every process it started that inherited fd 3 (stage
// commands, finalize steps, git) to exit: the read end of that pipe sees
// EOF only then. No process of a crashed run outlives this call, so the
// reaper judges a state that no longer changes.
func runHelper(t testing.TB, repo *gittest.Repo, mode string, extra ...string) helperRun {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, repoEnv+"="+repo.Dir), extra...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{pw}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	werr := cmd.Wait()
	io.Copy(io.Discard, pr)
	pr.Close()
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		t.Fatalf("%s helper: %v", mode, werr)
	}
	return helperRun{pid: cmd.Process.Pid, status: cmd.ProcessState.Sys().(syscall.WaitStatus), out: out.String()}
}

func armed(point string) string { return crashpoint.EnvVar + "=" + point }
