package pipeline_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// monitorRun is one monitor process run to its end (or its crash).
type monitorRun struct {
	pid    int
	status syscall.WaitStatus
	out    string // its stdout and stderr
}

// runMonitor runs job id in a monitor process (this test binary in monitor
// mode) with crash point point armed ("" for none) and waits for it to end.
//
// The monitor inherits the write end of a pipe on fd 3 without close-on-exec,
// so every process it starts (the stage command, finalize steps, gates, git)
// inherits it too; the read end sees EOF only once all of them have exited.
// A cleanup registered here stops the job's command group, if the record
// names one, and then waits for that EOF, so no process of the crashed run
// outlives the test or writes into its temp dir while it is removed.
func runMonitor(t *testing.T, repo *gittest.Repo, s *gitstate.Store, id, point string) monitorRun {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outPath := filepath.Join(t.TempDir(), "monitor.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = helperEnviron(repo, "monitor", jobEnv+"="+id, crashpoint.EnvVar+"="+point)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{pw}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if j, err := s.Get(id); err == nil {
			// The command is in its own process group and was not killed
			// with its monitor. SignalGroup confirms the group by the
			// leader's identity, so a recycled pid is never signalled.
			procid.SignalGroup(j.Command, syscall.SIGKILL)
			procid.SignalGroup(j.Finalizer, syscall.SIGKILL)
		}
		io.Copy(io.Discard, pr) // EOF: every process of the run has exited
		pr.Close()
	})
	run := monitorRun{pid: cmd.Process.Pid}
	werr := cmd.Wait()
	run.status = cmd.ProcessState.Sys().(syscall.WaitStatus)
	b, _ := os.ReadFile(outPath)
	run.out = string(b)
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		t.Fatalf("monitor: %v", werr)
	}
	return run
}

// The monitor is SIGKILLed at each crash point of Run and Finalize; what it
// leaves behind is a record that parses and says exactly how far it got, so
// that the reaper can judge it, and an event log whose lines all parse.
// With no crash point the same job runs to done and advances once.
func TestMonitorCrashMatrix(t *testing.T) {
	const task, branch = "feat/crash", "feat/crash"
	nextID := gitstate.JobID(task, "review", 1)

	// Checks shared by every case where the job is left running.
	leftRunning := func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
		t.Helper()
		if j.Status != gitstate.Running {
			t.Fatalf("status %s (%s), want running", j.Status, j.Reason)
		}
		if !j.EndedAt.IsZero() || j.EndedBy != "" || j.Reason != "" || j.NextJob != "" {
			t.Errorf("a running job has ended_at %v, ended_by %q, reason %q, next_job %q", j.EndedAt, j.EndedBy, j.Reason, j.NextJob)
		}
		l, err := env.Store.Active()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(l.Jobs, func(a *gitstate.Job) bool { return a.ID == j.ID }) {
			t.Errorf("the running job is not among the active jobs %v", l.Jobs)
		}
		if _, err := env.Store.Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
			t.Errorf("next job %s: %v, want ErrNotFound", nextID, err)
		}
	}
	commandStamped := func(t *testing.T, j *gitstate.Job) {
		t.Helper()
		if j.Command.IsZero() || j.Command.StartTime == 0 || j.PGID != j.Command.PID {
			t.Errorf("command %+v, pgid %d: want the command's identity, leading its own group", j.Command, j.PGID)
		}
	}
	exitRecorded := func(t *testing.T, j *gitstate.Job) {
		t.Helper()
		if j.ExitCode == nil || *j.ExitCode != 0 {
			t.Errorf("exit_code %v, want 0", j.ExitCode)
		}
		if j.FinishedAt.IsZero() {
			t.Error("finished_at is not set")
		}
	}

	cases := []struct {
		point string
		check func(t *testing.T, env *pipeline.Env, j *gitstate.Job)
	}{
		{"run.claimed", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			leftRunning(t, env, j)
			if !j.Command.IsZero() || j.PGID != 0 || j.ExitCode != nil || !j.FinishedAt.IsZero() || !j.Finalizer.IsZero() {
				t.Errorf("crashed right after the claim, yet command %+v pgid %d exit_code %v finished_at %v finalizer %+v",
					j.Command, j.PGID, j.ExitCode, j.FinishedAt, j.Finalizer)
			}
		}},
		{"run.stamped", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			leftRunning(t, env, j)
			commandStamped(t, j)
			if j.ExitCode != nil || !j.FinishedAt.IsZero() {
				t.Errorf("exit_code %v, finished_at %v: want none, the monitor died before the command's exit", j.ExitCode, j.FinishedAt)
			}
		}},
		{"run.exit_recorded", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			leftRunning(t, env, j)
			commandStamped(t, j)
			exitRecorded(t, j)
			if !j.Finalizer.IsZero() {
				t.Errorf("finalizer %+v before any finalize step ran", j.Finalizer)
			}
		}},
		{"run.finalize_started", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			leftRunning(t, env, j)
			commandStamped(t, j)
			exitRecorded(t, j)
			if j.Finalizer.IsZero() || j.Finalizer.StartTime == 0 || j.Finalizer.PID == j.Command.PID {
				t.Errorf("finalizer %+v: want the finalize step's identity", j.Finalizer)
			}
		}},
		{"finalize.claimed", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			if j.Status != gitstate.Done || j.EndedBy != gitstate.EndedByMonitor || j.EndedAt.IsZero() {
				t.Fatalf("status %s, ended_by %q, ended_at %v (%s); want done by the monitor", j.Status, j.EndedBy, j.EndedAt, j.Reason)
			}
			exitRecorded(t, j)
			if j.NextJob != nextID {
				t.Fatalf("next_job %q, want %q", j.NextJob, nextID)
			}
			if _, err := env.Store.Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
				t.Fatalf("next job %s exists (%v) though the monitor died before the enqueue", nextID, err)
			}
			if !env.NeedsAdvance(j) {
				t.Error("NeedsAdvance = false for a done job whose next job is missing")
			}
			// The reaper finds it without reading every ended job.
			if !pendingAdvance(t, env, j.ID) {
				t.Error("the done job is not among the pending advances")
			}
			// The repair: advance creates the next job, exactly once.
			next, err := env.Advance(context.Background(), j)
			if err != nil || next == nil {
				t.Fatalf("Advance: %v, %v", next, err)
			}
			if next.ID != nextID || next.Status != gitstate.Queued || next.Stage != "review" || next.Task != task ||
				next.Branch != branch || next.Attempt != 1 || next.Target != "main" {
				t.Errorf("advanced to %+v", next)
			}
			before, _ := os.ReadFile(env.Store.RecordPath(nextID))
			again, err := env.Advance(context.Background(), j)
			if err != nil || again == nil || again.ID != nextID {
				t.Fatalf("second Advance: %v, %v", again, err)
			}
			if after, _ := os.ReadFile(env.Store.RecordPath(nextID)); string(after) != string(before) {
				t.Error("second Advance rewrote the next job's record")
			}
			if env.NeedsAdvance(j) {
				t.Error("NeedsAdvance = true after Advance")
			}
			if pendingAdvance(t, env, j.ID) {
				t.Error("the job is still a pending advance after Advance")
			}
			evs, _ := env.Store.Events()
			if got := eventsOf(evs, nextID); len(got) != 1 || got[0] != ">queued@"+itoa(os.Getpid()) {
				t.Errorf("events of the next job %v, want one create by this process", got)
			}
		}},
		{"", func(t *testing.T, env *pipeline.Env, j *gitstate.Job) {
			if j.Status != gitstate.Done || j.EndedBy != gitstate.EndedByMonitor || j.NextJob != nextID {
				t.Fatalf("status %s (%s), ended_by %q, next_job %q; want done by the monitor, next %s", j.Status, j.Reason, j.EndedBy, j.NextJob, nextID)
			}
			if len(j.Gates) != 1 || !j.Gates[0].Passed || j.Gates[0].Name != "commits_ahead" {
				t.Errorf("gates %+v, want commits_ahead passed", j.Gates)
			}
			next, err := env.Store.Get(nextID)
			if err != nil || next.Status != gitstate.Queued {
				t.Fatalf("next job: %v, %v", next, err)
			}
			if env.NeedsAdvance(j) || pendingAdvance(t, env, j.ID) {
				t.Error("an advanced job still needs advancing")
			}
		}},
	}
	for _, c := range cases {
		name := c.point
		if name == "" {
			name = "no-crash"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			repo, env := newRepo(t, pipelineToml)
			j, created, err := env.Enqueue(pipeline.Request{Task: task, Branch: branch, Stage: "build"})
			if err != nil || !created {
				t.Fatalf("Enqueue: %v, %v", created, err)
			}
			run := runMonitor(t, repo, env.Store, j.ID, c.point)
			if c.point == "" {
				if !run.status.Exited() || run.status.ExitStatus() != 0 {
					t.Fatalf("monitor ended with %v, want exit 0; output:\n%s", run.status, run.out)
				}
			} else if !run.status.Signaled() || run.status.Signal() != syscall.SIGKILL {
				t.Fatalf("monitor ended with %v, want SIGKILL at crash point %s; output:\n%s", run.status, c.point, run.out)
			}

			got, err := env.Store.Get(j.ID)
			if err != nil {
				t.Fatalf("record after the crash: %v", err)
			}
			if got.Monitor.PID != run.pid || got.Monitor.StartTime == 0 || got.Monitor.Host == "" || got.StartedAt.IsZero() {
				t.Errorf("monitor %+v, started_at %v: want the monitor process (pid %d)", got.Monitor, got.StartedAt, run.pid)
			}
			if l, err := procid.Check(got.Monitor); err != nil || l != procid.Dead {
				t.Errorf("monitor liveness %v, %v; want dead", l, err)
			}
			c.check(t, env, got)
			t.Logf("monitor output:\n%s", run.out)

			evs := checkStateOnDisk(t, env.Store)
			want := []string{">queued@" + itoa(os.Getpid()), "queued>running@" + itoa(run.pid)}
			if got.Status.Terminal() {
				want = append(want, "running>"+string(got.Status)+"@"+itoa(run.pid))
			}
			if gotEv := eventsOf(evs, j.ID); !slices.Equal(gotEv, want) {
				t.Errorf("events of the job %v, want %v", gotEv, want)
			}
		})
	}
}

// pendingAdvance reports whether job id is listed by Store.PendingAdvances.
func pendingAdvance(t *testing.T, env *pipeline.Env, id string) bool {
	t.Helper()
	l, err := env.Store.PendingAdvances()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range l.Unreadable {
		t.Errorf("pending advances: unreadable %s: %v", u.Path, u.Err)
	}
	return slices.ContainsFunc(l.Jobs, func(j *gitstate.Job) bool { return j.ID == id })
}
