package crashmatrix_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

var crashRuns = flag.Int("crash.runs", 1, "runs per crash point and scenario in TestCrashMatrix (20 for the long matrix)")

// matrixToml: build makes a commit on the task's branch, must be ahead of
// main, has one finalize step and advances to merge, a merge stage. The
// reaper judges on one observation with no interval, so recovery is one
// pass.
const matrixToml = `target = "main"

[reaper]
dead_ticks = 1
interval_s = 0

[[stages]]
name = "build"
run = "git commit -q --allow-empty -m built"
gates = ["commits_ahead"]
finalize = ["true"]
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
gates = ["mergeable"]
`

// newWorld makes a repository with orch.toml and an initialised state dir.
func newWorld(t testing.TB, toml string) (*gittest.Repo, *pipeline.Env) {
	t.Helper()
	return pipelinetest.New(t, toml)
}

// recover makes reaper passes, as hooks and watch do, until one acts no
// more (at most five).
func recoverPasses(t testing.TB, env *pipeline.Env) []string {
	t.Helper()
	var errs []string
	for i := 0; i < 5; i++ {
		snap, err := reaper.RunOnce(context.Background(), env, passOptions(env))
		if err != nil {
			t.Fatalf("reaper pass: %v", err)
		}
		for _, e := range snap.Errors {
			errs = append(errs, fmt.Sprintf("reaper pass error: %+v", e))
		}
		if len(snap.Actions) == 0 {
			break
		}
	}
	return errs
}

// waitGroupsGone waits until the process groups a job names are confirmed
// gone. runHelper has seen every process of the run close its files, but a
// process that has closed them is not a zombie yet for a moment (exit
// closes files before it notifies the parent); a pass in that moment
// rightly sees the group alive and leaves the job for a later pass. This
// polls the condition itself (with backoff), bounded.
func waitGroupsGone(t testing.TB, j *gitstate.Job) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	wait := 100 * time.Microsecond
	for _, id := range []procid.Identity{j.Command, j.Finalizer} {
		for !id.IsZero() {
			l, err := procid.GroupLiveness(id)
			if err != nil || l != procid.Alive {
				break
			}
			if time.Now().After(deadline) {
				t.Logf("process group of %s still alive after 10 s", id)
				return
			}
			time.Sleep(wait)
			wait = min(2*wait, 20*time.Millisecond)
		}
	}
}

// outcome is what one scenario run found.
type outcome struct {
	reached    bool // a process died of SIGKILL at the armed point (or the armed git invocation happened)
	gitCalls   int  // with a git fault armed: git invocations the armed processes made
	violations []string
	logGaps    int
	// behind: with a remote, the local target was left behind the
	// remote's after recovery (not a violation: the remote is the target
	// of record; see docs/RELIABILITY.md).
	behind bool
}

type scenario struct {
	name string
	run  func(t *testing.T, point string) outcome
}

var (
	pipelineScenario = scenario{"pipeline", runPipeline}
	mergeScenario    = scenario{"merge", func(t *testing.T, p string) outcome { return runMerge(t, p, false) }}
	remoteScenario   = scenario{"merge+remote", func(t *testing.T, p string) outcome { return runMerge(t, p, true) }}
	leaseScenario    = scenario{"lease", runLease}
)

// matrix: every crash point, and the scenarios that reach it. "" is the
// baseline: the scenario with nothing armed, which must pass the same checks.
var matrix = []struct {
	point     string
	scenarios []scenario
}{
	{"", []scenario{pipelineScenario, mergeScenario, remoteScenario, leaseScenario}},
	// A job record written, the summary in its running marker not yet
	// (the monitor's claim, command stamp, exit code), and written: a
	// pass judges by the record whatever the marker says.
	{"store.updated", []scenario{pipelineScenario}},
	{"store.updated:2", []scenario{pipelineScenario}},
	{"store.updated:3", []scenario{pipelineScenario}},
	{"store.summarised:2", []scenario{pipelineScenario}},
	{"run.claimed", []scenario{pipelineScenario}},
	{"run.stamped", []scenario{pipelineScenario}},
	// Armed in every monitor: the build monitor dies at its own hit, and
	// the merge monitor (a new process) at the merge stage's.
	{"run.exit_recorded", []scenario{pipelineScenario}},
	{"run.finalize_spawned", []scenario{pipelineScenario}},
	{"run.finalize_started", []scenario{pipelineScenario}},
	{"run.finalize_step.0", []scenario{pipelineScenario}},
	{"finalize.claimed", []scenario{pipelineScenario}},
	{"lease.acquired", []scenario{pipelineScenario, mergeScenario, leaseScenario}},
	{"lease.release", []scenario{pipelineScenario, mergeScenario, leaseScenario}},
	{"lease.reclaim", []scenario{leaseScenario}},
	{"merge.commit_tree", []scenario{pipelineScenario, mergeScenario}},
	// The target's worktree moved with its ref (main is checked out in
	// the main worktree): index.lock taken, files moved, new index ready,
	// ref moved, index in place. "passes only": recovery by reaper passes
	// alone must finish the owed sync and give the job its true outcome.
	{"merge.index_locked", []scenario{pipelineScenario, passesOnlyScenario, mergeScenario, remoteScenario}},
	{"merge.worktree_updated", []scenario{pipelineScenario, passesOnlyScenario, mergeScenario, remoteScenario}},
	{"merge.index_ready", []scenario{pipelineScenario, passesOnlyScenario, mergeScenario, remoteScenario}},
	{"merge.update_ref", []scenario{pipelineScenario, passesOnlyScenario, mergeScenario, remoteScenario}},
	{"merge.index_committed", []scenario{pipelineScenario, passesOnlyScenario, mergeScenario, remoteScenario}},
	{"merge.push", []scenario{remoteScenario}},
}

// TestCrashMatrix crashes a real process at every crash point of the code
// that writes state, recovers as a user would, and checks the invariants of
// docs/RELIABILITY.md. -crash.runs=N repeats each cell N times.
func TestCrashMatrix(t *testing.T) {
	runs := *crashRuns
	if runs < 1 {
		runs = 1
	}
	type row struct {
		point, scenario                   string
		runs, reached, viol, gaps, behind int
		examples                          []string
	}
	var (
		mu   sync.Mutex
		rows []*row
	)
	start := time.Now()
	t.Run("cells", func(t *testing.T) {
		for _, cell := range matrix {
			for _, sc := range cell.scenarios {
				name := cell.point
				if name == "" {
					name = "none"
				}
				rw := &row{point: name, scenario: sc.name}
				mu.Lock()
				rows = append(rows, rw)
				mu.Unlock()
				t.Run(name+"/"+sc.name, func(t *testing.T) {
					t.Parallel()
					for i := 0; i < runs; i++ {
						o := sc.run(t, cell.point)
						mu.Lock()
						rw.runs++
						if o.reached {
							rw.reached++
						}
						rw.viol += len(o.violations)
						rw.gaps += o.logGaps
						if o.behind {
							rw.behind++
						}
						if len(rw.examples) < 3 {
							rw.examples = append(rw.examples, o.violations...)
						}
						mu.Unlock()
						for _, v := range o.violations {
							t.Errorf("run %d: violation: %s", i+1, v)
						}
						if cell.point != "" && !o.reached {
							t.Errorf("run %d: crash point %s was never reached in scenario %s", i+1, cell.point, sc.name)
						}
					}
				})
			}
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "\ncrash matrix (%d run(s) per cell, %s):\n", runs, time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "| %-22s | %-12s | %4s | %7s | %10s | %8s | %12s |\n", "point", "scenario", "runs", "crashed", "violations", "log gaps", "local behind")
	fmt.Fprintf(&b, "|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 24), strings.Repeat("-", 14), strings.Repeat("-", 6), strings.Repeat("-", 9), strings.Repeat("-", 12), strings.Repeat("-", 10), strings.Repeat("-", 14))
	total := 0
	for _, r := range rows {
		fmt.Fprintf(&b, "| %-22s | %-12s | %4d | %7d | %10d | %8d | %12d |\n", r.point, r.scenario, r.runs, r.reached, r.viol, r.gaps, r.behind)
		total += r.viol
	}
	fmt.Fprintf(&b, "total violations: %d\n", total)
	t.Log(b.String())
	if os.Getenv("CRASHMATRIX_TABLE") != "" {
		os.WriteFile(os.Getenv("CRASHMATRIX_TABLE"), []byte(b.String()), 0o644)
	}
}

// runPipeline: a task through build (command, finalize step) and its
// advance to a merge stage. Every monitor runs with the point armed (each is
// a new process, so "name:2" is the second hit within one monitor). Then the
// user's recovery: reaper passes; run the merge job if it is queued (armed
// too); if the task did not land, retry a failed build (unarmed) or re-run
// the merge of a failed merge job after reclaiming stale leases. At the end
// the branch must be in main exactly once.
func runPipeline(t *testing.T, point string) outcome {
	repo, env := newWorld(t, matrixToml)
	ctx := context.Background()
	const task = "feat/crash"
	oldMain := repo.Git(repo.Dir, "rev-parse", "main")
	var o outcome
	var passErrs []string

	build, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: task, Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	fault := newGitFault(t, point)
	monitor := func(id string, arm bool) {
		extra := []string{jobEnv + "=" + id}
		if arm && point != "" {
			extra = append(extra, armEnv(fault, point)...)
		}
		r := runHelper(t, repo, "monitor", extra...)
		if j, err := env.Store.Get(id); err == nil {
			waitGroupsGone(t, j)
		}
		if r.killed() {
			o.reached = true
		} else if r.status.ExitStatus() != 0 {
			t.Logf("monitor of %s: %v\n%s", id, r.status, r.out)
		}
		passErrs = append(passErrs, recoverPasses(t, env)...)
	}
	monitor(build.ID, true)
	// main moves on meanwhile, so the merge is a real merge commit.
	repo.Commit(repo.Dir, "main work", map[string]string{"main.txt": "main\n"})
	mergeID := gitstate.JobID(task, "merge", 1)
	if j, err := env.Store.Get(mergeID); err == nil && j.Status == gitstate.Queued {
		monitor(mergeID, true)
	}
	if fault != nil {
		o.reached, o.gitCalls = fault.reached(t)
	}
	o.violations = append(o.violations, commitSafe(repo)...)

	// The user's part: make the task land.
	for attempt := 1; attempt <= 3; attempt++ {
		b, _ := env.Store.Get(gitstate.JobID(task, "build", attempt))
		m, _ := env.Store.Get(gitstate.JobID(task, "merge", attempt))
		if m != nil && m.Status == gitstate.Done {
			break
		}
		if b == nil {
			o.violations = append(o.violations, fmt.Sprintf("attempt %d: no build job", attempt))
			break
		}
		if b.Status == gitstate.Failed || b.Status == gitstate.Cancelled {
			nb, _, err := env.Retry(b.ID)
			if err != nil {
				o.violations = append(o.violations, fmt.Sprintf("retry %s: %v", b.ID, err))
				break
			}
			monitor(nb.ID, false)
			if m2, err := env.Store.Get(gitstate.JobID(task, "merge", nb.Attempt)); err == nil && m2.Status == gitstate.Queued {
				monitor(m2.ID, false)
			}
			continue
		}
		if m != nil && m.Status.Terminal() {
			// orch-hooks merge JOB after a lost merge: reclaim, re-run.
			lease.Open(env.Store.Dir()).ReclaimStale(ctx, false)
			if _, err := merge.New(env.Repo).Merge(ctx, merge.Request{Branch: m.Branch, Target: m.Target, Job: m.ID, Wait: time.Minute,
				Author: merge.Signature{Name: m.MergeAuthor.Name, Email: m.MergeAuthor.Email, When: m.StartedAt}}); err != nil {
				o.violations = append(o.violations, fmt.Sprintf("merge re-run of %s: %v", m.ID, err))
			}
			break
		}
		o.violations = append(o.violations, fmt.Sprintf("attempt %d: build %s, merge %v: not terminal after recovery", attempt, b.Status, m))
		break
	}
	o.violations = append(o.violations, passErrs...)
	r := checkInvariants(repo, env, oldMain, []mergeCheck{{branch: task, merged: true}})
	o.violations = append(o.violations, r.violations...)
	o.logGaps = r.logGaps
	return o
}

// runMerge: `orch-hooks merge --branch feat/m` in a process with the point
// armed (through a remote when asked); then reclaim and re-run, as a user
// would. The branch must be in main (and the remote's main) exactly once.
func runMerge(t *testing.T, point string, remote bool) outcome {
	repo, env := newWorld(t, matrixToml)
	ctx := context.Background()
	const br = "feat/m"
	wt := repo.Worktree("m", br)
	repo.Commit(wt, "work on m", map[string]string{"m.txt": "m\n"})
	repo.Commit(repo.Dir, "main work", map[string]string{"main.txt": "main\n"})
	oldMain := repo.Git(repo.Dir, "rev-parse", "main")
	var extra []string
	var bare string
	if remote {
		bare = filepath.Join(filepath.Dir(repo.Dir), "origin.git")
		repo.Git(repo.Dir, "clone", "-q", "--bare", repo.Dir, bare)
		repo.Git(repo.Dir, "remote", "add", "origin", bare)
		repo.Git(repo.Dir, "fetch", "-q", "origin")
		extra = append(extra, remoteEnv+"=origin")
	}
	var o outcome
	arm := extra
	fault := newGitFault(t, point)
	if point != "" {
		arm = append(append([]string(nil), extra...), armEnv(fault, point)...)
	}
	r := runHelper(t, repo, "merge", append(arm, branchEnv+"="+br)...)
	o.reached = r.killed()
	if fault != nil {
		o.reached, o.gitCalls = fault.reached(t)
	}
	o.violations = append(o.violations, commitSafe(repo)...)
	// A git invocation made to fail may fail the merge: that is the
	// point; what counts is what the re-run below converges to.
	if fault == nil && !r.killed() && r.status.ExitStatus() != 0 {
		o.violations = append(o.violations, fmt.Sprintf("merge helper: %v: %s", r.status, r.out))
	}
	o.violations = append(o.violations, recoverPasses(t, env)...)
	// The re-run: converges, whatever the crash left.
	rem := ""
	if remote {
		rem = "origin"
	}
	res, err := merge.New(env.Repo).Merge(ctx, merge.Request{Branch: br, Target: "main", Job: "merge-" + gitstate.JobID(br, "m", 1),
		Author: fixedAuthor, Wait: time.Minute, Remote: rem})
	if err != nil {
		o.violations = append(o.violations, fmt.Sprintf("merge re-run: %v", err))
	} else if point == "" && res.Kind != merge.AlreadyMerged {
		o.violations = append(o.violations, fmt.Sprintf("re-run of a completed merge: %s, want %s", res.Kind, merge.AlreadyMerged))
	}
	if remote {
		// origin's main holds the branch once and the old main.
		tip := repo.Git(repo.Dir, "rev-parse", br)
		rm := repo.Git(bare, "rev-parse", "main")
		if _, err := repo.TryGit(bare, "merge-base", "--is-ancestor", tip, rm); err != nil {
			o.violations = append(o.violations, "origin's main lacks the branch")
		}
		if _, err := repo.TryGit(bare, "merge-base", "--is-ancestor", oldMain, rm); err != nil {
			o.violations = append(o.violations, "origin's main lost its history")
		}
		if out, _ := repo.TryGit(bare, "rev-list", "--merges", "main"); len(strings.Fields(out)) != 1 {
			o.violations = append(o.violations, fmt.Sprintf("origin's main has %d merge commits, want 1", len(strings.Fields(out))))
		}
	}
	if remote {
		if _, err := repo.TryGit(repo.Dir, "merge-base", "--is-ancestor", br, "main"); err != nil {
			o.behind = true
		}
	}
	// With a remote the local main may lag (see behind); it must still
	// hold at most one merge of the branch and its old history.
	rep := checkInvariants(repo, env, oldMain, []mergeCheck{{branch: br, merged: !remote}})
	o.violations = append(o.violations, rep.violations...)
	o.logGaps = rep.logGaps
	return o
}

// runLease: lease.acquired and lease.release crash a process that takes
// the lease of main and gives it back; lease.reclaim crashes a reaper pass
// that reclaims the lease a dead holder left. Recovery is a reaper pass;
// then the lease must be free, and a new holder gets a larger token.
func runLease(t *testing.T, point string) outcome {
	repo, env := newWorld(t, matrixToml)
	ctx := context.Background()
	oldMain := repo.Git(repo.Dir, "rev-parse", "main")
	var o outcome
	m := lease.Open(env.Store.Dir())
	if point == "lease.reclaim" {
		if r := runHelper(t, repo, "lease", opEnv+"=hold"); r.status.ExitStatus() != 0 {
			t.Fatalf("lease holder: %v %s", r.status, r.out)
		}
		r := runHelper(t, repo, "reap", armed(point))
		o.reached = r.killed()
	} else {
		extra := []string{opEnv + "=cycle"}
		if point != "" {
			extra = append(extra, armed(point))
		}
		r := runHelper(t, repo, "lease", extra...)
		o.reached = r.killed()
		if !r.killed() && r.status.ExitStatus() != 0 {
			o.violations = append(o.violations, fmt.Sprintf("lease helper: %v %s", r.status, r.out))
		}
	}
	before, _ := os.ReadFile(filepath.Join(env.Store.Dir(), "leases", "main.seq"))
	o.violations = append(o.violations, recoverPasses(t, env)...)
	if l, err := m.Get("main"); err != nil || l != nil {
		o.violations = append(o.violations, fmt.Sprintf("lease of main after recovery: %+v, %v; want none", l, err))
	}
	self := mustSelf(t)
	l, err := m.TryAcquire(ctx, "main", lease.Request{Holder: "after", Owner: self, TTL: time.Minute})
	if err != nil {
		o.violations = append(o.violations, fmt.Sprintf("acquire after recovery: %v", err))
	} else {
		var last uint64
		fmt.Sscan(strings.TrimSpace(string(before)), &last)
		if l.Token <= last {
			o.violations = append(o.violations, fmt.Sprintf("token %d after recovery, not larger than %d issued before", l.Token, last))
		}
		if err := m.Release(ctx, "main", l.Token); err != nil {
			o.violations = append(o.violations, fmt.Sprintf("release: %v", err))
		}
	}
	rep := checkInvariants(repo, env, oldMain, nil)
	o.violations = append(o.violations, rep.violations...)
	o.logGaps = rep.logGaps
	return o
}

// report is what one check of the invariants found.
type report struct {
	violations []string
	logGaps    int // history entries with no event-log line (the documented gap)
}

func (r *report) bad(format string, args ...any) {
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

// mergeCheck names a branch whose landing in main is checked.
type mergeCheck struct {
	branch string
	// merged: the branch must be in main (its merge job is done, or a
	// merge of it succeeded).
	merged bool
}

// commitSafe checks main's worktree as the user finds it right after the
// armed processes died or failed, before any recovery: a plain `git commit`
// there must not record a tree older than main's (which would silently
// revert a merge). Either git refuses the commit (an index.lock is there)
// or the index holds main's tree.
func commitSafe(repo *gittest.Repo) []string {
	if br, _ := repo.TryGit(repo.Dir, "symbolic-ref", "--short", "HEAD"); br != "main" {
		return nil
	}
	gitDir, err := repo.TryGit(repo.Dir, "rev-parse", "--absolute-git-dir")
	if err != nil {
		return []string{fmt.Sprintf("main's worktree: %v", err)}
	}
	if _, err := os.Lstat(filepath.Join(gitDir, "index.lock")); err == nil {
		return nil // git commit refuses: "Another git process seems to be running"
	}
	idx, err := repo.TryGit(repo.Dir, "write-tree")
	tree, _ := repo.TryGit(repo.Dir, "rev-parse", "main^{tree}")
	if err != nil || idx != tree {
		return []string{fmt.Sprintf("before recovery, a plain git commit in main's worktree would record tree %s (%v), not main's tree %s: it would revert the merge", idx, err, tree)}
	}
	return nil
}

// checkInvariants checks, after recovery, everything docs/RELIABILITY.md
// promises about the state on disk. oldMain is main before the run.
func checkInvariants(repo *gittest.Repo, env *pipeline.Env, oldMain string, merges []mergeCheck) *report {
	r := &report{}
	s := env.Store
	ctx := context.Background()

	// The event log: every line whole and parseable.
	data, err := os.ReadFile(s.EventsPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		r.bad("read event log: %v", err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		r.bad("event log ends in a cut line")
	}
	byJob := map[string][]gitstate.Transition{}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		var ev gitstate.Transition
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			r.bad("event log line %d does not parse: %v", i+1, err)
			continue
		}
		byJob[ev.Job] = append(byJob[ev.Job], ev)
	}

	// Every record parses; each history is a path of the state machine.
	all, err := s.All()
	if err != nil {
		r.bad("list jobs: %v", err)
		return r
	}
	for _, u := range all.Unreadable {
		r.bad("unreadable record %s: %v", u.Path, u.Err)
	}
	jobs := map[string]*gitstate.Job{}
	for _, j := range all.Jobs {
		jobs[j.ID] = j
	}
	for _, j := range all.Jobs {
		h := j.History
		if len(h) == 0 || h[0].From != "" || h[0].To != gitstate.Queued {
			r.bad("job %s: history does not start with its creation", j.ID)
			continue
		}
		terminal := 0
		for i := 1; i < len(h); i++ {
			if h[i].From != h[i-1].To || !gitstate.CanTransition(h[i].From, h[i].To) {
				r.bad("job %s: history step %d %s→%s is not an edge", j.ID, i, h[i].From, h[i].To)
			}
			if h[i].To.Terminal() {
				terminal++
			}
		}
		if terminal > 1 {
			r.bad("job %s: ended %d times in its history", j.ID, terminal)
		}
		if h[len(h)-1].To != j.Status {
			r.bad("job %s: status %s but history ends in %s", j.ID, j.Status, h[len(h)-1].To)
		}
		// The log holds a subsequence of the history: never a line the
		// history lacks, never a second end.
		evs, rest, ends := byJob[j.ID], h, 0
		for _, ev := range evs {
			if ev.To.Terminal() {
				ends++
			}
			for len(rest) > 0 && !sameTransition(rest[0], ev) {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				r.bad("job %s: event %s→%s by pid %d is not in its history", j.ID, ev.From, ev.To, ev.PID)
				break
			}
			rest = rest[1:]
		}
		if ends > 1 {
			r.bad("job %s: %d terminal events in the log", j.ID, ends)
		}
		if len(evs) < len(h) {
			r.logGaps += len(h) - len(evs)
		}
		delete(byJob, j.ID)

		// Nothing stuck: a running job has a live process.
		if j.Status == gitstate.Running && allDead(j) {
			cg, _ := procid.GroupLiveness(j.Command)
			fg, _ := procid.GroupLiveness(j.Finalizer)
			r.bad("job %s: running after recovery, monitor/command/finalizer dead (command group %v, finalize group %v, exit code %v, finalizer %+v)",
				j.ID, cg, fg, j.ExitCode, j.Finalizer)
		}
		if j.Status.Terminal() && (j.EndedAt.IsZero() || j.EndedBy == "") {
			r.bad("job %s: %s without ended_at/ended_by", j.ID, j.Status)
		}
		// Advance exactly once: a done job of a stage with a next stage
		// names its next job, which exists; nothing else advances.
		st, ok := env.Config.Stage(j.Stage)
		switch {
		case !ok:
		case j.Status == gitstate.Done && st.Next != "":
			want := gitstate.JobID(j.Task, st.Next, j.Attempt)
			if j.NextJob != want {
				r.bad("job %s: done, next_job %q, want %q", j.ID, j.NextJob, want)
			} else if n := jobs[want]; n == nil {
				r.bad("job %s: done, its next job %s was never enqueued", j.ID, want)
			}
		case j.NextJob != "":
			r.bad("job %s: %s yet names next job %s", j.ID, j.Status, j.NextJob)
		}
	}
	for id := range byJob {
		r.bad("event log names job %s, which has no record", id)
	}
	// A job of a later stage exists only as the advance of a done job.
	for _, j := range all.Jobs {
		if j.Stage == env.Config.Stages[0].Name || j.Attempt > 1 {
			continue
		}
		found := false
		for _, p := range all.Jobs {
			if p.NextJob == j.ID && p.Status == gitstate.Done {
				found = true
			}
		}
		if !found {
			r.bad("job %s exists without a done job advancing to it", j.ID)
		}
	}

	// Leases: no lease held by a dead owner; every lease record parses.
	ls, unreadable, err := lease.Open(s.Dir()).List()
	if err != nil {
		r.bad("list leases: %v", err)
	}
	for _, u := range unreadable {
		r.bad("unreadable lease %s: %v", u.Path, u.Err)
	}
	for _, l := range ls {
		if lv, err := procid.Check(l.Owner); err != nil || lv != procid.Alive {
			r.bad("lease of %s (token %d) held by dead owner %s", l.Target, l.Token, l.Owner)
		}
	}
	if _, err := reaper.LoadState(s.Dir()); err != nil {
		r.bad("reaper state: %v", err)
	}

	// Target history intact; one merge commit per merged branch.
	head, err := repo.TryGit(repo.Dir, "rev-parse", "--verify", "main^{commit}")
	if err != nil {
		r.bad("main: %v", err)
		return r
	}
	if ok, err := env.Repo.IsAncestor(ctx, oldMain, head); err != nil || !ok {
		r.bad("old main %s is not an ancestor of main %s (%v)", oldMain, head, err)
	}
	for _, m := range merges {
		tip, err := repo.TryGit(repo.Dir, "rev-parse", "--verify", "refs/heads/"+m.branch+"^{commit}")
		n := mergeCommits(repo, m.branch)
		if n > 1 {
			r.bad("branch %s: %d merge commits in main", m.branch, n)
		}
		if m.merged {
			if err != nil {
				r.bad("branch %s: %v", m.branch, err)
				continue
			}
			if ok, _ := env.Repo.IsAncestor(ctx, tip, head); !ok {
				r.bad("branch %s (%s) is said merged but is not in main", m.branch, tip)
			}
		}
	}

	// main is checked out in the main worktree: after recovery its index
	// holds main's tree (a plain git commit there records main, never an
	// older tree that reverts a merge), no index.lock is left, and its
	// tracked files match.
	if br, _ := repo.TryGit(repo.Dir, "symbolic-ref", "--short", "HEAD"); br == "main" {
		idx, err := repo.TryGit(repo.Dir, "write-tree")
		tree, _ := repo.TryGit(repo.Dir, "rev-parse", "main^{tree}")
		if err != nil || idx != tree {
			r.bad("main's worktree: index holds tree %s (%v), main's tree is %s", idx, err, tree)
		}
		if st, err := repo.TryGit(repo.Dir, "status", "--porcelain", "--untracked-files=no"); err != nil || st != "" {
			r.bad("main's worktree: tracked files differ from its index: %q (%v)", st, err)
		}
	}
	return r
}

func sameTransition(a, b gitstate.Transition) bool {
	return a.From == b.From && a.To == b.To && a.PID == b.PID && a.Actor == b.Actor && a.At.Equal(b.At)
}

// allDead reports whether every process a running job names is confirmed
// dead.
func allDead(j *gitstate.Job) bool {
	for _, id := range []procid.Identity{j.Monitor, j.Command, j.Finalizer} {
		if id.IsZero() {
			continue
		}
		if lv, err := procid.Check(id); err != nil || lv != procid.Dead {
			return false
		}
	}
	return true
}

// mergeCommits counts the merge commits in main that merged branch.
func mergeCommits(repo *gittest.Repo, branch string) int {
	out, _ := repo.TryGit(repo.Dir, "rev-list", "--merges", "--fixed-strings", "--grep=Merge branch '"+branch+"' into", "main")
	if out == "" {
		return 0
	}
	return len(strings.Split(out, "\n"))
}

func mustSelf(t testing.TB) procid.Identity {
	t.Helper()
	id, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	return id
}
