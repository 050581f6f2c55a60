package crashmatrix_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/faultgit"
)

var gitFaultStride = flag.Int("gitfault.stride", 0,
	"TestGitFaultMatrix fails every stride-th git invocation (1: every one; 0: 1 with -crash.runs>1, else a stride that keeps CI to about 12 runs per scenario, 6 under -race)")

// gitFaultPrefix marks a matrix "point" that is not a crash point but a git
// invocation made to fail: "git#K" fails the K-th git process the armed
// processes start (counted across all of them, in order); "git#0" fails
// none and only counts.
const gitFaultPrefix = "git#"

// gitFault is the fault-injecting git (package faultgit) installed for one
// scenario run.
type gitFault struct {
	k     int
	path  string // PATH with the wrapper first
	state string // its counters and log
}

// newGitFault installs the wrapper when point is a git fault, else returns
// nil.
func newGitFault(t testing.TB, point string) *gitFault {
	t.Helper()
	rest, ok := strings.CutPrefix(point, gitFaultPrefix)
	if !ok {
		return nil
	}
	k, err := strconv.Atoi(rest)
	if err != nil {
		t.Fatalf("git fault %q: %v", point, err)
	}
	dir := t.TempDir()
	path, err := faultgit.InstallSelf(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &gitFault{k: k, path: path, state: filepath.Join(dir, "state")}
}

// env is what an armed process gets: the wrapper first on PATH, its state
// dir, and the rule.
func (f *gitFault) env() []string {
	env := []string{"PATH=" + f.path, faultgit.EnvDir + "=" + f.state}
	if f.k > 0 {
		env = append(env, faultgit.EnvRules+"=*#"+strconv.Itoa(f.k)+":fail")
	}
	return env
}

// reached reports whether the K-th invocation happened (and so failed), and
// how many git invocations the armed processes made.
func (f *gitFault) reached(t testing.TB) (bool, int) {
	t.Helper()
	log, err := faultgit.Log(f.state)
	if err != nil {
		t.Fatalf("faultgit log: %v", err)
	}
	return f.k > 0 && len(log) >= f.k, len(log)
}

// armEnv is the environment that arms a process at point: a crash point, or
// a failing git invocation.
func armEnv(f *gitFault, point string) []string {
	if f != nil {
		return f.env()
	}
	return []string{armed(point)}
}

// TestGitFaultMatrix is the crash matrix's axis "git invocation k fails":
// for each scenario that runs git (a task through build and its merge stage;
// a merge; a merge through a remote), a first run counts the git processes
// the armed processes start (n), then one run per k in 1..n (every stride-th
// k) makes the k-th fail, as a git killed, out of disk or refused by a lock
// would, recovers as a user would (reaper passes, retry, merge re-run) and
// checks the invariants of docs/RELIABILITY.md.
func TestGitFaultMatrix(t *testing.T) {
	type row struct {
		scenario                 string
		calls, runs, fired, viol int
	}
	var (
		mu   sync.Mutex
		rows []*row
	)
	start := time.Now()
	t.Run("scenarios", func(t *testing.T) {
		for _, sc := range []scenario{pipelineScenario, mergeScenario, remoteScenario} {
			rw := &row{scenario: sc.name}
			rows = append(rows, rw)
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				base := sc.run(t, gitFaultPrefix+"0")
				for _, v := range base.violations {
					t.Errorf("with the wrapper and no fault: violation: %s", v)
				}
				n := base.gitCalls
				if n == 0 {
					t.Fatalf("the armed processes started no git through the wrapper")
				}
				stride := *gitFaultStride
				if stride <= 0 {
					stride = max(1, n/12)
					if raceBuild {
						stride = max(1, n/6)
					}
					if *crashRuns > 1 {
						stride = 1
					}
				}
				mu.Lock()
				rw.calls = n
				mu.Unlock()
				for k := 1; k <= n; k += stride {
					o := sc.run(t, fmt.Sprintf("%s%d", gitFaultPrefix, k))
					mu.Lock()
					rw.runs++
					if o.reached {
						rw.fired++
					}
					rw.viol += len(o.violations)
					mu.Unlock()
					for _, v := range o.violations {
						t.Errorf("git invocation %d of %d failed: violation: %s", k, n, v)
					}
					// A fault early on can take a path with fewer git
					// calls; the run still counts, the K-th call just did
					// not happen. It must not be the rule.
				}
			})
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "\ngit fault matrix (%s):\n", time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "| %-12s | %9s | %4s | %5s | %10s |\n", "scenario", "git calls", "runs", "fired", "violations")
	fmt.Fprintf(&b, "|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 14), strings.Repeat("-", 11), strings.Repeat("-", 6), strings.Repeat("-", 7), strings.Repeat("-", 12))
	total := 0
	for _, r := range rows {
		fmt.Fprintf(&b, "| %-12s | %9d | %4d | %5d | %10d |\n", r.scenario, r.calls, r.runs, r.fired, r.viol)
		total += r.viol
		if r.runs > 0 && r.fired*2 < r.runs {
			t.Errorf("%s: the failing git invocation happened in only %d of %d runs", r.scenario, r.fired, r.runs)
		}
	}
	fmt.Fprintf(&b, "total violations: %d\n", total)
	t.Log(b.String())
	if f := os.Getenv("GITFAULT_TABLE"); f != "" {
		os.WriteFile(f, []byte(b.String()), 0o644)
	}
}
