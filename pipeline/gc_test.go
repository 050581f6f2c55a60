package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// gcToml: "work" ends at once, done; "prep" advances to "work".
const gcToml = `target = "main"

[[stages]]
name = "work"
run = "true"

[[stages]]
name = "prep"
run = "true"
next = "work"
`

// runDone runs a job of task for branch to its end in this process (a real
// monitor: claim, worktree, command, finalize) and returns it, done.
func runDone(t *testing.T, env *pipeline.Env, task, branch string, attempt int) *gitstate.Job {
	t.Helper()
	j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: branch, Stage: "work", Attempt: attempt})
	if err != nil {
		t.Fatal(err)
	}
	res, err := env.Run(context.Background(), j.ID, pipeline.RunOptions{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res.Job.Status != gitstate.Done {
		t.Fatalf("job %s ended %s (%s)", j.ID, res.Job.Status, res.Job.Reason)
	}
	return res.Job
}

// at runs fn with the store's clock set to t0 (times written then are t0).
func at(env *pipeline.Env, t0 time.Time, fn func()) {
	saved := env.Store.Now
	env.Store.Now = func() time.Time { return t0 }
	defer func() { env.Store.Now = saved }()
	fn()
}

func enqueue(t *testing.T, env *pipeline.Env, task, branch string, attempt int) *gitstate.Job {
	t.Helper()
	j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: branch, Stage: "work", Attempt: attempt})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func cancel(t *testing.T, env *pipeline.Env, id string) {
	t.Helper()
	if _, won, err := env.Cancel(context.Background(), id); err != nil || !won {
		t.Fatalf("cancel %s: won %v, %v", id, won, err)
	}
}

// worktrees lists the worktrees git knows of.
func worktrees(t *testing.T, repo *gittest.Repo) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(repo.Git(repo.Dir, "worktree", "list", "--porcelain"), "\n") {
		if p, ok := strings.CutPrefix(l, "worktree "); ok {
			out = append(out, p)
		}
	}
	return out
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// jobFiles are the files gc removes with a job.
func jobFiles(env *pipeline.Env, id string) []string {
	return []string{env.Store.RecordPath(id), env.Store.LogPath(id), env.Store.LockPath("job-" + id)}
}

func gc(t *testing.T, env *pipeline.Env, olderThan time.Duration, dry, force bool) pipeline.GCReport {
	t.Helper()
	rep, err := env.GC(context.Background(), olderThan, dry, force)
	if err != nil {
		t.Fatalf("gc: %v", err)
	}
	slices.Sort(rep.Jobs)
	slices.Sort(rep.Worktrees)
	return rep
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestGCRemovesEndedJobsAndTheirWorktree(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	a1 := runDone(t, env, "feat/a", "feat/a", 1)
	a2 := runDone(t, env, "feat/a", "feat/a", 2)
	wt := env.WorktreePath("feat/a")
	tip := repo.Git(repo.Dir, "rev-parse", "refs/heads/feat/a")
	for _, id := range []string{a1.ID, a2.ID} {
		for _, p := range jobFiles(env, id) {
			if !exists(t, p) {
				t.Fatalf("before gc: %s missing", p)
			}
		}
	}
	if !slices.Contains(worktrees(t, repo), wt) {
		t.Fatalf("before gc: %s not a worktree: %v", wt, worktrees(t, repo))
	}

	rep := gc(t, env, 0, false, false)
	if diff := cmp.Diff(sorted(a1.ID, a2.ID), rep.Jobs); diff != "" {
		t.Errorf("removed jobs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{wt}, rep.Worktrees); diff != "" {
		t.Errorf("removed worktrees (-want +got):\n%s", diff)
	}
	if rep.Bytes <= 0 || rep.DryRun || len(rep.KeptDirty) != 0 {
		t.Errorf("report: %+v", rep)
	}
	for _, id := range []string{a1.ID, a2.ID} {
		for _, p := range jobFiles(env, id) {
			if exists(t, p) {
				t.Errorf("after gc: %s still there", p)
			}
		}
		if _, err := env.Store.Get(id); !errors.Is(err, gitstate.ErrNotFound) {
			t.Errorf("Get(%s) after gc: %v, want ErrNotFound", id, err)
		}
	}
	if exists(t, wt) {
		t.Errorf("worktree %s still on disk", wt)
	}
	if slices.Contains(worktrees(t, repo), wt) {
		t.Errorf("git still lists %s: %v", wt, worktrees(t, repo))
	}
	// Pruned: git's own record of the worktree is gone too.
	if ents, _ := os.ReadDir(filepath.Join(repo.Dir, ".git", "worktrees")); len(ents) != 0 {
		t.Errorf(".git/worktrees after gc: %v", ents)
	}
	// Branches are never deleted.
	if got := repo.Git(repo.Dir, "rev-parse", "refs/heads/feat/a"); got != tip {
		t.Errorf("branch feat/a is %s after gc, was %s", got, tip)
	}
	// Listing still works and shows nothing.
	if l, err := env.Store.All(); err != nil || len(l.Jobs)+len(l.Unreadable) != 0 {
		t.Errorf("store after gc: %+v, %v", l, err)
	}

	// A second gc has nothing to do.
	rep = gc(t, env, 0, false, false)
	if len(rep.Jobs)+len(rep.Worktrees)+len(rep.KeptDirty) != 0 {
		t.Errorf("second gc: %+v", rep)
	}
}

func TestGCOlderThan(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	long := time.Now().Add(-48 * time.Hour)
	var old, oldOfMixed *gitstate.Job
	at(env, long, func() {
		old = runDone(t, env, "old", "feat/old", 1)
		oldOfMixed = runDone(t, env, "mixed", "feat/mixed", 1)
	})
	recent := runDone(t, env, "recent", "feat/recent", 1)
	recentOfMixed := runDone(t, env, "mixed", "feat/mixed", 2)

	rep := gc(t, env, 24*time.Hour, false, false)
	if diff := cmp.Diff(sorted(old.ID, oldOfMixed.ID), rep.Jobs); diff != "" {
		t.Errorf("removed jobs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{env.WorktreePath("old")}, rep.Worktrees); diff != "" {
		t.Errorf("removed worktrees (-want +got):\n%s", diff)
	}
	for _, id := range []string{recent.ID, recentOfMixed.ID} {
		if _, err := env.Store.Get(id); err != nil {
			t.Errorf("recent job %s: %v", id, err)
		}
	}
	got := worktrees(t, repo)
	for _, task := range []string{"recent", "mixed"} {
		if !slices.Contains(got, env.WorktreePath(task)) {
			t.Errorf("worktree of %s removed though a job of it ended recently: %v", task, got)
		}
	}
}

func TestGCKeepsWorktreeOfTaskWithActiveJob(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	ended := runDone(t, env, "feat/a", "feat/a", 1)
	queued := enqueue(t, env, "feat/a", "feat/a", 2)
	runDone(t, env, "feat/b", "feat/b", 1)
	// A running job, its monitor alive (this process).
	running := enqueue(t, env, "feat/b", "feat/b", 2)
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	if _, won, err := env.Store.Claim(context.Background(), running.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "test",
		func(j *gitstate.Job) { j.Monitor = self }); err != nil || !won {
		t.Fatalf("claim: %v %v", won, err)
	}

	rep := gc(t, env, 0, false, false)
	if len(rep.Worktrees) != 0 {
		t.Errorf("gc removed worktrees of tasks with an active job: %v", rep.Worktrees)
	}
	got := worktrees(t, repo)
	for _, task := range []string{"feat/a", "feat/b"} {
		if !slices.Contains(got, env.WorktreePath(task)) {
			t.Errorf("worktree of %s gone: %v", task, got)
		}
	}
	for _, id := range []string{queued.ID, running.ID} {
		j, err := env.Store.Get(id)
		if err != nil || j.Status.Terminal() {
			t.Errorf("active job %s after gc: %v, %v", id, j, err)
		}
		if slices.Contains(rep.Jobs, id) {
			t.Errorf("gc reports removing active job %s", id)
		}
	}
	// The task's ended job itself is old enough: its record goes
	// (README: records of jobs ended longer ago than D).
	if !slices.Contains(rep.Jobs, ended.ID) {
		t.Errorf("ended job %s of a task with an active job was not removed: %v", ended.ID, rep.Jobs)
	}
	if l, err := env.Store.Active(); err != nil || len(l.Jobs) != 2 {
		t.Errorf("active jobs after gc: %+v, %v", l, err)
	}
}

func TestGCDirtyWorktreeKeptUnlessForced(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	j := runDone(t, env, "feat/a", "feat/a", 1)
	wt := env.WorktreePath("feat/a")
	if err := os.WriteFile(filepath.Join(wt, "notes.txt"), []byte("unfinished\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	clean := runDone(t, env, "feat/b", "feat/b", 1)

	rep := gc(t, env, 0, false, false)
	if diff := cmp.Diff([]string{wt}, rep.KeptDirty); diff != "" {
		t.Errorf("kept dirty (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{clean.ID}, rep.Jobs); diff != "" {
		t.Errorf("removed jobs (-want +got): the dirty worktree's task keeps its records\n%s", diff)
	}
	for _, p := range jobFiles(env, j.ID)[:2] {
		if !exists(t, p) {
			t.Errorf("%s removed though its task's worktree was kept", p)
		}
	}
	if b, err := os.ReadFile(filepath.Join(wt, "notes.txt")); err != nil || string(b) != "unfinished\n" {
		t.Errorf("uncommitted file after gc: %q, %v", b, err)
	}

	// A dry run with --force says it would remove it, and does not.
	rep = gc(t, env, 0, true, true)
	if diff := cmp.Diff([]string{wt}, rep.Worktrees); diff != "" || !rep.DryRun {
		t.Errorf("gc --dry-run --force worktrees (-want +got):\n%s", diff)
	}
	if !exists(t, filepath.Join(wt, "notes.txt")) {
		t.Fatal("a dry run removed the dirty worktree")
	}

	rep = gc(t, env, 0, false, true)
	if diff := cmp.Diff([]string{wt}, rep.Worktrees); diff != "" {
		t.Errorf("gc --force worktrees (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{j.ID}, rep.Jobs); diff != "" {
		t.Errorf("gc --force jobs (-want +got):\n%s", diff)
	}
	if exists(t, wt) || slices.Contains(worktrees(t, repo), wt) {
		t.Errorf("gc --force kept %s", wt)
	}
	if _, err := repo.TryGit(repo.Dir, "rev-parse", "--verify", "refs/heads/feat/a"); err != nil {
		t.Errorf("branch deleted: %v", err)
	}
}

func TestGCModifiedTrackedFileIsDirty(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	repo.Commit(repo.Dir, "a file", map[string]string{"f.txt": "one\n"})
	runDone(t, env, "feat/a", "feat/a", 1)
	wt := env.WorktreePath("feat/a")
	if err := os.WriteFile(filepath.Join(wt, "f.txt"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := gc(t, env, 0, false, false)
	if diff := cmp.Diff([]string{wt}, rep.KeptDirty); diff != "" || len(rep.Worktrees) != 0 {
		t.Errorf("modified tracked file: kept %v, removed %v", rep.KeptDirty, rep.Worktrees)
	}
}

// tree lists every path under dir (but git's object store), with the
// content hash of each file under the state dir.
func tree(t *testing.T, dir, stateDir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == filepath.Join(".git", "objects") {
			return filepath.SkipDir
		}
		line := rel
		if !d.IsDir() && strings.HasPrefix(p, stateDir+string(filepath.Separator)) {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += " " + hex.EncodeToString(sum[:8])
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGCDryRunRemovesNothing(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	a := runDone(t, env, "feat/a", "feat/a", 1)
	runDone(t, env, "feat/b", "feat/b", 1)
	if err := os.WriteFile(filepath.Join(env.WorktreePath("feat/b"), "wip"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An abandoned temp file, old enough to be collected.
	tmp := filepath.Join(env.Store.Dir(), "jobs", statefile.TempPrefix+"abandoned")
	if err := os.WriteFile(tmp, []byte("half a record"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}

	before := tree(t, filepath.Dir(repo.Dir), env.Store.Dir())
	wtBefore := worktrees(t, repo)
	dry := gc(t, env, 0, true, false)
	if diff := cmp.Diff(before, tree(t, filepath.Dir(repo.Dir), env.Store.Dir())); diff != "" {
		t.Errorf("gc --dry-run changed files (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(wtBefore, worktrees(t, repo)); diff != "" {
		t.Errorf("gc --dry-run changed worktrees (-before +after):\n%s", diff)
	}
	if !dry.DryRun || !slices.Equal(dry.Jobs, []string{a.ID}) || !slices.Equal(dry.Worktrees, []string{env.WorktreePath("feat/a")}) ||
		!slices.Equal(dry.KeptDirty, []string{env.WorktreePath("feat/b")}) || !slices.Equal(dry.Temps, []string{tmp}) {
		t.Errorf("dry-run report: %+v", dry)
	}

	// The real run does what the dry run said.
	real := gc(t, env, 0, false, false)
	dry.DryRun = false
	if diff := cmp.Diff(dry, real); diff != "" {
		t.Errorf("gc did not do what gc --dry-run said (-dry +real):\n%s", diff)
	}
	if exists(t, tmp) {
		t.Errorf("abandoned temp file %s kept", tmp)
	}
}

func TestGCKeepsFreshTempFiles(t *testing.T) {
	_, env := newRepo(t, gcToml)
	tmp := filepath.Join(env.Store.Dir(), "jobs", statefile.TempPrefix+"in-flight")
	if err := os.WriteFile(tmp, []byte("being written"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := gc(t, env, 0, false, false)
	if len(rep.Temps) != 0 || !exists(t, tmp) {
		t.Errorf("gc took a fresh temp file for abandoned: %+v", rep)
	}
}

func TestGCNeverRemovesUnreadableRecords(t *testing.T) {
	_, env := newRepo(t, gcToml)
	runDone(t, env, "feat/a", "feat/a", 1)
	bad := map[string]string{
		filepath.Join(env.Store.Dir(), "jobs", "broken.work.1.deadbeef.toml"): "status = \"done\"\nthis is not toml",
		filepath.Join(env.Store.Dir(), "jobs", "empty.work.1.deadbeef.toml"):  "",
		filepath.Join(env.Store.Dir(), "jobs", "not a valid id.toml"):         "id = \"x\"\n",
	}
	for p, c := range bad {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-30 * 24 * time.Hour)
		os.Chtimes(p, old, old)
	}
	rep := gc(t, env, 0, false, true)
	if len(rep.Jobs) != 1 {
		t.Errorf("removed %v, want only the readable ended job", rep.Jobs)
	}
	for p, c := range bad {
		b, err := os.ReadFile(p)
		if err != nil || string(b) != c {
			t.Errorf("unreadable record %s after gc: %q, %v", p, b, err)
		}
	}
}

func TestGCNegativeAgeIsNeverOld(t *testing.T) {
	_, env := newRepo(t, gcToml)
	var j *gitstate.Job
	// Ended "in an hour": the clock has since moved back.
	at(env, time.Now().Add(time.Hour), func() { j = runDone(t, env, "feat/a", "feat/a", 1) })
	rep := gc(t, env, 0, false, false)
	if len(rep.Jobs)+len(rep.Worktrees) != 0 {
		t.Errorf("gc removed a job that ended in the future: %+v", rep)
	}
	if _, err := env.Store.Get(j.ID); err != nil {
		t.Error(err)
	}
}

func TestGCKeepsCancelledQueuedJobsWithoutWorktree(t *testing.T) {
	// A task that never ran has no worktree: gc removes its records and
	// reports no worktree.
	_, env := newRepo(t, gcToml)
	j := enqueue(t, env, "feat/never", "feat/never", 1)
	cancel(t, env, j.ID)
	rep := gc(t, env, 0, false, false)
	if !slices.Equal(rep.Jobs, []string{j.ID}) || len(rep.Worktrees) != 0 {
		t.Errorf("report: %+v", rep)
	}
}

// A done job whose next job a crash lost is advanced by the next reaper
// pass (DESIGN: "Advance is ... never lost"). gc must not take the record
// that repair needs.
func TestGCKeepsPendingAdvance(t *testing.T) {
	_, env := newRepo(t, gcToml)
	j, _, err := env.Enqueue(pipeline.Request{Branch: "feat/a", Stage: "prep"})
	if err != nil {
		t.Fatal(err)
	}
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, won, err := env.Store.Claim(ctx, j.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "test",
		func(j *gitstate.Job) { j.Monitor = self }); err != nil || !won {
		t.Fatal(won, err)
	}
	next := gitstate.JobID(j.Task, "work", j.Attempt)
	// The claim that the advancer makes, without the enqueue that follows
	// it (the advancer died in between).
	if _, won, err := env.Store.Claim(ctx, j.ID, []gitstate.Status{gitstate.Running}, gitstate.Done, "exit code 0",
		func(j *gitstate.Job) { j.NextJob, j.EndedBy = next, gitstate.EndedByMonitor }); err != nil || !won {
		t.Fatal(won, err)
	}
	done, err := env.Store.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !env.NeedsAdvance(done) {
		t.Fatal("set-up: the done job does not need an advance")
	}

	gc(t, env, 0, false, false)
	_, nextErr := env.Store.Get(next)
	kept, keptErr := env.Store.Get(j.ID)
	switch {
	case nextErr == nil:
		// gc advanced it itself: fine.
	case keptErr == nil && env.NeedsAdvance(kept):
		// kept for the reaper's repair: fine.
	default:
		t.Fatalf("gc removed done job %s whose next job %s was never enqueued; the advance is lost for good (next: %v, done job: %v)",
			j.ID, next, nextErr, keptErr)
	}
}

// Two tasks on one branch share the worktree that has it checked out
// (a job runs in the worktree that already has its branch). gc must not
// remove it under the other task's running job.
func TestGCKeepsWorktreeSharedWithActiveTask(t *testing.T) {
	repo, env := newRepo(t, gcToml)
	runDone(t, env, "first", "feat/shared", 1)
	wt := env.WorktreePath("first")
	other := enqueue(t, env, "second", "feat/shared", 1)
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	if _, won, err := env.Store.Claim(context.Background(), other.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "test",
		func(j *gitstate.Job) { j.Monitor = self }); err != nil || !won {
		t.Fatal(won, err)
	}
	if got, err := env.FindWorktree(context.Background(), other); err != nil || got != wt {
		t.Fatalf("set-up: the running job's worktree is %q (%v), want %s", got, err, wt)
	}
	rep := gc(t, env, 0, false, false)
	if slices.Contains(rep.Worktrees, wt) || !exists(t, wt) || !slices.Contains(worktrees(t, repo), wt) {
		t.Fatalf("gc removed worktree %s, in which running job %s (task second, branch feat/shared) works: "+
			"gc decides by the task whose path it is, not by which active job has the branch checked out there", wt, other.ID)
	}
}

// HoldDispatcher and WaitDispatcher (dispatcher.go, the lock of watch and
// of gc's neighbour commands) are tested here: one holder at a time, the
// holder named to the others, free on release.
func TestHoldDispatcher(t *testing.T) {
	_, env := newRepo(t, gcToml)
	release, info, err := env.HoldDispatcher()
	if err != nil {
		t.Fatal(err)
	}
	if info.PID != os.Getpid() || info.Host == "" || info.Since.IsZero() {
		t.Errorf("holder info: %+v", info)
	}
	_, holder, err := env.HoldDispatcher()
	if !errors.Is(err, pipeline.ErrDispatcherHeld) {
		t.Fatalf("second HoldDispatcher: %v, want ErrDispatcherHeld", err)
	}
	if holder.PID != os.Getpid() || !holder.Since.Equal(info.Since) || !strings.Contains(err.Error(), "pid "+itoa(os.Getpid())) {
		t.Errorf("second HoldDispatcher names %+v (%v), want %+v", holder, err, info)
	}

	// A waiter is told who holds it, once, and takes over on release.
	var told []pipeline.DispatcherInfo
	got := make(chan error, 1)
	var release2 func()
	go func() {
		var err error
		release2, err = env.WaitDispatcher(context.Background(), 5*time.Millisecond, func(h pipeline.DispatcherInfo) { told = append(told, h) })
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("WaitDispatcher returned while the lock was held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitDispatcher did not take over after release")
	}
	if len(told) != 1 || told[0].PID != os.Getpid() {
		t.Errorf("onWait calls: %+v, want one naming the first holder", told)
	}
	release2()

	// A cancelled wait returns the context's error.
	r3, _, err := env.HoldDispatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer r3()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := env.WaitDispatcher(ctx, time.Millisecond, func(pipeline.DispatcherInfo) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled WaitDispatcher: %v", err)
	}
}
