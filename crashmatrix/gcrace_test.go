package crashmatrix_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// gcRaceTasks is how many old tasks gc has to go through: enough that a
// start can fall between its first listing and its last removal.
const gcRaceTasks = 24

// gcRaceAgent is the stage command of TestGCRacesStart. Attempt 1 makes a
// commit and succeeds, except for the last task, which fails (so it can be
// retried). Attempt 2 says it has started, waits for the test's go-ahead,
// and only then does its work in its worktree: the work a worktree
// removed under it would lose.
const gcRaceAgent = `set -e
if [ "$ORCH_ATTEMPT" = 1 ]; then
	git commit -q --allow-empty -m "work of $ORCH_TASK"
	[ "$ORCH_TASK" != "%[2]s" ]
	exit
fi
: > "%[1]s/started"
while [ ! -e "%[1]s/go" ]; do sleep 0.02; done
echo "the retry's work" > work.txt
git add work.txt
git commit -q -m "the retry's work"
`

// TestGCRacesStart (issue 13 item 5; DESIGN.md "Real repositories": gc and
// a job's start exclude each other per task). gc goes through many old
// tasks; it is stopped (faultgit pause=) at a git command about the last
// task's worktree — its git status (is it clean?) or its git worktree
// remove — and a retry of that task is started with a real `orch-hooks
// run` meanwhile. Whatever the order the two then take, the retry's
// worktree and work survive: the job ends done with its commit on the
// branch and its worktree in place.
func TestGCRacesStart(t *testing.T) {
	t.Parallel()
	for _, at := range []string{"status", "worktree"} {
		t.Run("pause_at_"+at, func(t *testing.T) {
			t.Parallel()
			gcRacesStart(t, at)
		})
	}
}

// gcRacesStart is one TestGCRacesStart: gc paused at its gcRaceTasks-th
// invocation of git subcommand at (one per task: the last task's).
func gcRacesStart(t *testing.T, at string) {
	sync := t.TempDir()
	last := fmt.Sprintf("t%03d", gcRaceTasks-1)
	agent := filepath.Join(sync, "agent.sh")
	if err := os.WriteFile(agent, []byte(fmt.Sprintf(gcRaceAgent, sync, last)), 0o755); err != nil {
		t.Fatal(err)
	}
	repo, env := newWorld(t, `target = "main"

[[stages]]
name = "build"
run = "sh '`+agent+`'"
`)
	ctx := context.Background()
	var failed string
	for i := 0; i < gcRaceTasks; i++ {
		task := fmt.Sprintf("t%03d", i)
		j, _, err := env.Enqueue(pipeline.Request{Task: task, Stage: "build", Branch: "feat/" + task})
		if err != nil {
			t.Fatal(err)
		}
		res, _ := env.Run(ctx, j.ID, pipeline.RunOptions{})
		want := gitstate.Done
		if task == last {
			want, failed = gitstate.Failed, j.ID
		}
		if res.Job == nil || res.Job.Status != want {
			t.Fatalf("setup: job %s ended %+v, want %s", j.ID, res.Job, want)
		}
	}
	wt := env.WorktreePath(last)

	// gc, stopped at its last git worktree remove: the last task's.
	fdir := t.TempDir()
	fpath, err := faultgit.InstallSelf(fdir)
	if err != nil {
		t.Fatal(err)
	}
	fstate := filepath.Join(fdir, "state")
	gc := exec.Command(cliBinary(t), "gc", "--older-than", "0s", "--json")
	gc.Dir = repo.Dir
	gc.Env = append(repo.Env(), "PATH="+fpath, faultgit.EnvDir+"="+fstate,
		faultgit.EnvRules+"="+at+"#"+fmt.Sprint(gcRaceTasks)+":pause=gc")
	var gcOut, gcErr bytes.Buffer
	gc.Stdout, gc.Stderr = &gcOut, &gcErr
	if err := gc.Start(); err != nil {
		t.Fatal(err)
	}
	gcDone := make(chan error, 1)
	go func() { gcDone <- gc.Wait() }()
	defer func() {
		faultgit.Resume(fstate, "gc")
		<-gcDone
	}()
	waitUntil(t, "gc to reach the last task's git "+at, func() bool {
		select {
		case err := <-gcDone:
			gcDone <- err
			t.Fatalf("gc ended (%v) before its last git %s:\n%s%s", err, at, gcOut.String(), gcErr.String())
		default:
		}
		return faultgit.Paused(fstate, "gc")
	})

	// Meanwhile: a retry of the last task, run for real.
	r := runCLI(t, repo, "retry", failed)
	wantCode(t, "retry", r, 0, "")
	retry := strings.TrimSpace(r.stdout)
	run := exec.Command(cliBinary(t), "run", retry)
	run.Dir = repo.Dir
	run.Env = repo.Env()
	var runOut bytes.Buffer
	run.Stdout, run.Stderr = &runOut, &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- run.Wait() }()
	defer func() {
		os.WriteFile(filepath.Join(sync, "go"), nil, 0o644)
		select {
		case <-runDone:
		case <-time.After(time.Minute):
			run.Process.Kill()
		}
	}()
	// Either the retry's command has started in the worktree gc is about
	// to remove, or its monitor is waiting for the task's lock, which gc
	// holds: both are the race, and both must end well.
	waitUntil(t, "the retry to start or to wait for the task's lock", func() bool {
		if _, err := os.Stat(filepath.Join(sync, "started")); err == nil {
			return true
		}
		return holdsOpen(run.Process.Pid, filepath.Join(env.Store.Dir(), "locks"), "task-")
	})
	if err := faultgit.Resume(fstate, "gc"); err != nil {
		t.Fatal(err)
	}
	if err := <-gcDone; err != nil {
		t.Errorf("gc: %v\n%s%s", err, gcOut.String(), gcErr.String())
	}
	gcDone <- nil
	waitUntil(t, "the retry's command to start", func() bool {
		_, err := os.Stat(filepath.Join(sync, "started"))
		return err == nil
	})
	if err := os.WriteFile(filepath.Join(sync, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var runErr error
	select {
	case runErr = <-runDone:
		runDone <- runErr
	case <-time.After(2 * time.Minute):
		t.Fatalf("the retry's run did not end; output:\n%s", runOut.String())
	}
	j, err := env.Store.Get(retry)
	if err != nil {
		t.Fatal(err)
	}
	if runErr != nil || j.Status != gitstate.Done {
		log, _ := os.ReadFile(env.Store.LogPath(retry))
		t.Errorf("the retry started during gc ended %s (%s), run: %v; want done\nrun: %s\nlog:\n%s", j.Status, j.Reason, runErr, runOut.String(), log)
	}
	if b, err := os.ReadFile(filepath.Join(wt, "work.txt")); err != nil || !strings.Contains(string(b), "retry's work") {
		t.Errorf("the retry's worktree lost its work: %q, %v", b, err)
	}
	if out, err := exec.Command("git", "-C", repo.Dir, "show", "feat/"+last+":work.txt").CombinedOutput(); err != nil {
		t.Errorf("the retry's commit is not on its branch: %v %s", err, out)
	}
	var rep pipeline.GCReport
	if err := json.Unmarshal(gcOut.Bytes(), &rep); err != nil {
		t.Fatalf("gc --json: %v\n%s%s", err, gcOut.String(), gcErr.String())
	}
	// Stopped before its last status, gc decides about the last worktree
	// after the retry was claimed: it must keep it. Stopped at its last
	// remove, it decided before: the worktree goes, and the retry, which
	// waited, makes it again.
	removed := slices.Contains(rep.Worktrees, wt)
	if at == "status" && removed {
		t.Errorf("gc removed %s, the worktree of a job claimed before gc decided", wt)
	}
	if len(rep.Worktrees) < gcRaceTasks-1 {
		t.Errorf("gc removed %d worktrees, want at least the %d of the other tasks", len(rep.Worktrees), gcRaceTasks-1)
	}
}

// waitUntil polls cond (state on disk or in /proc) until it holds; a
// minute without is a failure.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdsOpen reports whether process pid has a file in dir whose name
// starts with prefix open (a lock it holds or waits for).
func holdsOpen(pid int, dir, prefix string) bool {
	fds := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(fds)
	for _, e := range ents {
		p, err := os.Readlink(filepath.Join(fds, e.Name()))
		if err == nil && filepath.Dir(p) == dir && strings.HasPrefix(filepath.Base(p), prefix) {
			return true
		}
	}
	return false
}
