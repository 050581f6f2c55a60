package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// asyncMonitor is a monitor process (this test binary in monitor mode)
// running one job while the test works on it.
type asyncMonitor struct {
	cmd     *exec.Cmd
	outPath string
	exited  chan struct{} // closed once the monitor has been waited for
	status  syscall.WaitStatus
}

// startMonitor starts a monitor for job id and returns at once. As in
// runMonitor, every process of the run inherits the write end of a pipe, and
// the cleanup waits for its EOF after stopping the job's process groups, so
// nothing of the run outlives the test.
func startMonitor(t *testing.T, repo *gittest.Repo, s *gitstate.Store, id string) *asyncMonitor {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	m := &asyncMonitor{outPath: filepath.Join(t.TempDir(), "monitor.out"), exited: make(chan struct{})}
	out, err := os.Create(m.outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	m.cmd = exec.Command(os.Args[0])
	m.cmd.Env = helperEnviron(repo, "monitor", jobEnv+"="+id)
	m.cmd.Stdout, m.cmd.Stderr = out, out
	m.cmd.ExtraFiles = []*os.File{pw}
	err = m.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatal(err)
	}
	go func() {
		m.cmd.Wait()
		m.status = m.cmd.ProcessState.Sys().(syscall.WaitStatus)
		close(m.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-m.exited:
		default:
			m.cmd.Process.Signal(syscall.SIGCONT)
			m.cmd.Process.Kill() // our child, not yet waited for: the pid is ours
			<-m.exited
		}
		if j, err := s.Get(id); err == nil {
			procid.SignalGroup(j.Command, syscall.SIGKILL)
			procid.SignalGroup(j.Finalizer, syscall.SIGKILL)
		}
		io.Copy(io.Discard, pr)
		pr.Close()
	})
	return m
}

// wait waits for the monitor to exit and returns its output.
func (m *asyncMonitor) wait(t *testing.T) string {
	t.Helper()
	<-m.exited
	b, _ := os.ReadFile(m.outPath)
	return string(b)
}

func (m *asyncMonitor) output() string {
	b, _ := os.ReadFile(m.outPath)
	return string(b)
}

// mkfifo makes a named pipe in dir.
func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// meet opens fifo (for reading, or for writing) and closes it again: it
// returns once the process at the other end has opened it, which is how a
// finalize step says "I have started" and is told "go on". If the monitor
// exits first, the test fails with its output.
func meet(t *testing.T, m *asyncMonitor, fifo string, write bool) {
	t.Helper()
	flag := os.O_RDONLY
	if write {
		flag = os.O_WRONLY
	}
	opened := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, flag, 0)
		if err == nil {
			if write {
				io.WriteString(f, "go\n") // the step's read succeeds
			} else {
				io.Copy(io.Discard, f)
			}
			f.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-m.exited:
		// Unblock the opener: open the other end ourselves.
		other := os.O_WRONLY | syscall.O_NONBLOCK
		if write {
			other = os.O_RDONLY | syscall.O_NONBLOCK
		}
		if f, err := os.OpenFile(fifo, other, 0); err == nil {
			f.Close()
		}
		<-opened
		t.Fatalf("the monitor exited (%v) before meeting at %s; output:\n%s", m.status, filepath.Base(fifo), m.output())
	}
}

// fenceToml: a stage whose first finalize step says it started (TASK.ready),
// waits to be told to go on (TASK.go), and whose second step leaves a file
// (TASK.step2): the side effect that must never happen for an ended job.
const fenceToml = `target = "main"

[[stages]]
name = "ship"
run = "true"
finalize = ['echo started > "{{D}}/$ORCH_TASK.ready"; read go < "{{D}}/$ORCH_TASK.go"', ': > "{{D}}/$ORCH_TASK.step2"']
finalize_timeout_s = 600
`

// A monitor whose job is ended while it is inside a finalize step starts
// no further step: the reaper ends the job (as tier 2 does, without
// stopping anything) while the monitor is stopped with SIGSTOP inside step
// 1; then step 1 is let finish and the monitor continued. Step 2's side
// effect must never happen, the record must not change after the reaper's
// terminal write, and the monitor ends as a loser. Ten rounds.
func TestMonitorRunsNoStepAfterLosing(t *testing.T) {
	rounds := 10
	if testing.Short() {
		rounds = 3
	}
	dir := t.TempDir()
	repo, env := newRepo(t, strings.ReplaceAll(fenceToml, "{{D}}", dir))
	for round := 1; round <= rounds; round++ {
		task := fmt.Sprintf("fence%d", round)
		ready, gofifo := mkfifo(t, dir, task+".ready"), mkfifo(t, dir, task+".go")
		step2 := filepath.Join(dir, task+".step2")
		j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: task, Stage: "ship"})
		if err != nil {
			t.Fatal(err)
		}
		m := startMonitor(t, repo, env.Store, j.ID)
		meet(t, m, ready, false) // step 1 is running
		// The monitor starts a step under the job's lock: wait until it
		// has let go, so that it is stopped inside the step, not inside
		// the write.
		unlock, err := env.Store.Lock(context.Background(), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		unlock()

		if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// The reaper ends the job: the shared finalize path, as tier 2
		// runs it.
		res, err := env.Finalize(context.Background(), j.ID, pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
		if err != nil || !res.Won || res.Job.Status != gitstate.Done {
			t.Fatalf("round %d: the reaper's finalize: won=%v %v, %v", round, res.Won, res.Job, err)
		}
		if res.Job.FinalizeStep != 1 || res.Job.Finalizer.IsZero() || res.Job.ProgressAt.IsZero() {
			t.Errorf("round %d: finalize_step %d, finalizer %+v, progress_at %v; want step 1 stamped with its process",
				round, res.Job.FinalizeStep, res.Job.Finalizer, res.Job.ProgressAt)
		}
		ended, _ := os.ReadFile(env.Store.RecordPath(j.ID))

		meet(t, m, gofifo, true) // step 1 ends, exit 0
		if err := m.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		out := m.wait(t)
		if _, err := os.Stat(step2); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("round %d: step 2 ran for a job the reaper had ended (%v); monitor output:\n%s", round, err, out)
		}
		if !m.status.Exited() || m.status.ExitStatus() == 0 || !strings.Contains(out, "no longer running under this monitor") {
			t.Errorf("round %d: monitor ended %v; want a loser's exit naming why; output:\n%s", round, m.status, out)
		}
		if after, _ := os.ReadFile(env.Store.RecordPath(j.ID)); string(after) != string(ended) {
			t.Errorf("round %d: the record changed after the reaper ended the job", round)
		}
	}
	checkStateOnDisk(t, env.Store)
}

// progressToml: three finalize steps, each saying it started (READYk) and
// waiting to be told to go on (GOk), then leaving DONEk.
const progressToml = `target = "main"

[reaper]
finalize_grace_s = 1

[[stages]]
name = "ship"
run = "true"
finalize = [
  'echo > "{{D}}/$ORCH_TASK.ready1"; read go < "{{D}}/$ORCH_TASK.go1"; : > "{{D}}/$ORCH_TASK.done1"',
  'echo > "{{D}}/$ORCH_TASK.ready2"; read go < "{{D}}/$ORCH_TASK.go2"; : > "{{D}}/$ORCH_TASK.done2"',
  'echo > "{{D}}/$ORCH_TASK.ready3"; read go < "{{D}}/$ORCH_TASK.go3"; : > "{{D}}/$ORCH_TASK.done3"',
]
finalize_timeout_s = 600
`

// reaperPass makes one real reaper pass over env's jobs.
func reaperPass(t *testing.T, env *pipeline.Env) *reaper.Snapshot {
	t.Helper()
	snap, err := reaper.RunOnce(context.Background(), env, reaper.Options{StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range snap.Errors {
		t.Errorf("reaper pass: %+v", e)
	}
	return snap
}

// outlast returns once the reaper's clocks (wall and CLOCK_BOOTTIME) have
// both moved more than d past the moment it was called: a finalize step
// that takes longer than the grace.
func outlast(d time.Duration) {
	end := time.Now().Add(d + 50*time.Millisecond)
	bootEnd, _ := gitstate.BootTime()
	bootEnd += d + 50*time.Millisecond
	for {
		b, _ := gitstate.BootTime()
		if time.Now().After(end) && b > bootEnd {
			return
		}
		<-time.After(time.Until(end) + 10*time.Millisecond)
	}
}

// A live monitor making progress through finalize steps whose total
// outlasts finalize_grace (here 1 s; each step takes longer) is never
// reaped: tier 2 measures from the last progress stamp (a step started),
// not from the exit code. The job ends done by its monitor with all three
// steps run. A monitor stalled in one step past the grace is reaped by
// tier 2, and the stalled step's process group is stopped.
func TestTier2SparesProgressingMonitor(t *testing.T) {
	dir := t.TempDir()
	repo, env := newRepo(t, strings.ReplaceAll(progressToml, "{{D}}", dir))
	grace := env.Config.Reaper.FinalizeGrace()
	if grace != time.Second {
		t.Fatalf("finalize grace %s, want 1s from the test's orch.toml", grace)
	}
	fifos := func(task string) (ready, gos [4]string) {
		for k := 1; k <= 3; k++ {
			ready[k] = mkfifo(t, dir, fmt.Sprintf("%s.ready%d", task, k))
			gos[k] = mkfifo(t, dir, fmt.Sprintf("%s.go%d", task, k))
		}
		return
	}

	t.Run("progressing", func(t *testing.T) {
		ready, gos := fifos("prog")
		j, _, err := env.Enqueue(pipeline.Request{Task: "prog", Branch: "prog", Stage: "ship"})
		if err != nil {
			t.Fatal(err)
		}
		m := startMonitor(t, repo, env.Store, j.ID)
		for k := 1; k <= 3; k++ {
			meet(t, m, ready[k], false)
			// Step k has just started: the exit code is older than the
			// grace from step 2 on, the progress stamp is fresh.
			if snap := reaperPass(t, env); snap.Tier2 != 0 {
				t.Fatalf("step %d: tier 2 reaped a monitor in progress: %+v", k, snap.Actions)
			}
			if got, _ := env.Store.Get(j.ID); got.Status != gitstate.Running || got.FinalizeStep != k {
				t.Fatalf("step %d: %s, finalize_step %d; want running in step %d", k, got.Status, got.FinalizeStep, k)
			}
			outlast(grace)
			meet(t, m, gos[k], true)
		}
		out := m.wait(t)
		got, err := env.Store.Get(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != gitstate.Done || got.EndedBy != gitstate.EndedByMonitor || !m.status.Exited() || m.status.ExitStatus() != 0 {
			t.Fatalf("%s (%s) ended_by %q, monitor %v; want done by the monitor; output:\n%s", got.Status, got.Reason, got.EndedBy, m.status, out)
		}
		for k := 1; k <= 3; k++ {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("prog.done%d", k))); err != nil {
				t.Errorf("step %d did not finish: %v", k, err)
			}
		}
	})

	t.Run("stalled", func(t *testing.T) {
		ready, _ := fifos("stall")
		j, _, err := env.Enqueue(pipeline.Request{Task: "stall", Branch: "stall", Stage: "ship"})
		if err != nil {
			t.Fatal(err)
		}
		m := startMonitor(t, repo, env.Store, j.ID)
		meet(t, m, ready[1], false)
		if snap := reaperPass(t, env); snap.Tier2 != 0 {
			t.Fatalf("reaped inside the grace: %+v", snap.Actions)
		}
		outlast(grace) // step 1 never goes on: the monitor is stalled
		snap := reaperPass(t, env)
		got, err := env.Store.Get(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Tier2 != 1 || got.Status.Terminal() == false || got.EndedBy != gitstate.EndedByReaperExitCode {
			t.Fatalf("past the grace: tier2 %d, %s ended_by %q; want reaped by tier 2", snap.Tier2, got.Status, got.EndedBy)
		}
		// The stalled step was stopped by the reaper, so the monitor
		// ends as a loser and nothing further runs.
		out := m.wait(t)
		if l, err := procid.GroupLiveness(got.Finalizer); err != nil || l == procid.Alive {
			t.Errorf("the stalled step's group: %v, %v; want stopped", l, err)
		}
		for k := 1; k <= 3; k++ {
			if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("stall.done%d", k))); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("step %d finished (%v) for a reaped job; monitor output:\n%s", k, err, out)
			}
		}
	})
}

// spawnToml: one finalize step that leaves a file.
const spawnToml = `target = "main"

[[stages]]
name = "ship"
run = "true"
finalize = [': > "{{D}}/step1"']
`

// A monitor killed after starting a finalize step's process but before the
// write that stamps it leaves the step's gate shut: the step never runs, so
// the record never lacks a step that ran. Then a reaper pass (every process
// dead) ends the job, and still nothing runs.
func TestFinalizeStepNeverRunsUnstamped(t *testing.T) {
	dir := t.TempDir()
	step1 := filepath.Join(dir, "step1")
	// Registered first, so it runs last: after runMonitor's cleanup has
	// waited for every process of the run, the step's included.
	t.Cleanup(func() {
		if _, err := os.Stat(step1); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the finalize step ran though its stamp was never written (%v)", err)
		}
	})
	repo, env := newRepo(t, strings.ReplaceAll(spawnToml, "{{D}}", dir))
	j, _, err := env.Enqueue(pipeline.Request{Task: "gate", Branch: "gate", Stage: "ship"})
	if err != nil {
		t.Fatal(err)
	}
	run := runMonitor(t, repo, env.Store, j.ID, "run.finalize_spawned")
	if !run.status.Signaled() || run.status.Signal() != syscall.SIGKILL {
		t.Fatalf("monitor ended %v, want SIGKILL at run.finalize_spawned; output:\n%s", run.status, run.out)
	}
	got, err := env.Store.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != gitstate.Running || got.FinalizeStep != 0 || !got.Finalizer.IsZero() || got.ExitCode == nil {
		t.Fatalf("%s, finalize_step %d, finalizer %+v, exit %v; want running with the exit code and no step stamped",
			got.Status, got.FinalizeStep, got.Finalizer, got.ExitCode)
	}
	// The held process's end is not awaited here: the reaper judges the
	// job by its monitor (dead) and its command group (gone).
	env.Config.Reaper.DeadTicks = 1
	snap := reaperPass(t, env)
	if snap.Tier2 != 1 {
		t.Fatalf("tier2 %d, want the job with every process dead finalized: %+v", snap.Tier2, snap.Actions)
	}
}
