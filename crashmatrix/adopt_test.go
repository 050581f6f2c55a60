package crashmatrix_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
)

// adoptToml: the command says it started, waits for the test's "go" and
// exits with $CM_EXIT after a commit; the finalize step counts its runs.
// The reaper judges on one observation, so a job that would be lost is
// lost at the first pass.
const adoptToml = `target = "main"

[reaper]
dead_ticks = 1
interval_s = 0

[[stages]]
name = "build"
run = 'touch "$CM_SYNC/started"; while [ ! -e "$CM_SYNC/go" ]; do sleep 0.01; done; git commit -q --allow-empty -m built; exit ${CM_EXIT:-0}'
gates = ["commits_ahead"]
finalize = ['echo "$ORCH_JOB_ID" >> "$CM_SYNC/steps"']
`

// adoptCase is one job of an adoption cell: its repository, its sync
// directory and the CLI that drives it.
type adoptCase struct {
	t    *testing.T
	repo *gittest.Repo
	env  *pipeline.Env
	cli  string
	sync string
	id   string
}

func newAdoptCase(t *testing.T) *adoptCase {
	t.Helper()
	return newAdoptCaseWith(t, adoptToml)
}

func newAdoptCaseWith(t *testing.T, toml string) *adoptCase {
	t.Helper()
	cli := cliBinary(t)
	repo, env := newWorld(t, toml)
	j, _, err := env.Enqueue(pipeline.Request{Task: "t", Branch: "feat/t", Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	c := &adoptCase{t: t, repo: repo, env: env, cli: cli, sync: t.TempDir(), id: j.ID}
	// Whatever a failed cell leaves running ends: the command (and with
	// it any adopter waiting for it) by its process group's identity.
	t.Cleanup(func() {
		if j, err := env.Store.Get(c.id); err == nil {
			for _, g := range []procid.Identity{j.Command, j.Finalizer} {
				if !g.IsZero() {
					procid.SignalGroup(g, syscall.SIGKILL)
				}
			}
		}
	})
	return c
}

// command prepares the CLI with args against the case's repository.
func (c *adoptCase) command(extraEnv []string, args ...string) *exec.Cmd {
	cmd := exec.Command(c.cli, append([]string{"-C", c.repo.Dir}, args...)...)
	cmd.Env = append(append(os.Environ(), "CM_SYNC="+c.sync), extraEnv...)
	return cmd
}

// startMonitorAndKill runs `orch-hooks run JOB` as a child, waits for the
// command to start, and SIGKILLs the monitor by its handle: the command
// lives on in its own process group. It returns the job as the dead
// monitor left it.
func (c *adoptCase) startMonitorAndKill(extraEnv ...string) *gitstate.Job {
	c.t.Helper()
	mon := c.command(extraEnv, "run", c.id)
	var out strings.Builder
	mon.Stdout, mon.Stderr = &out, &out
	if err := mon.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.waitFile("started")
	if err := mon.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	mon.Wait()
	j := c.get()
	if j.Status != gitstate.Running || j.Command.IsZero() || j.ExitCode != nil {
		c.t.Fatalf("after the monitor's death: status %s, command %v, exit code %v; want running with its command stamped", j.Status, j.Command, j.ExitCode)
	}
	if l, _ := procid.GroupLiveness(j.Command); l != procid.Alive {
		c.t.Fatalf("the command died with its monitor (%s)", l)
	}
	return j
}

func (c *adoptCase) get() *gitstate.Job {
	c.t.Helper()
	j, err := c.env.Store.Get(c.id)
	if err != nil {
		c.t.Fatal(err)
	}
	return j
}

// reap runs `orch-hooks reap` and returns its output.
func (c *adoptCase) reap() string {
	c.t.Helper()
	out, err := c.command(nil, "reap").CombinedOutput()
	if err != nil {
		c.t.Fatalf("reap: %v\n%s", err, out)
	}
	return string(out)
}

// until polls cond (with backoff) for up to 30 s.
func (c *adoptCase) until(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	wait := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s; log:\n%s", what, c.log())
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
}

func (c *adoptCase) waitFile(name string) {
	c.t.Helper()
	c.until(name, func() bool { _, err := os.Stat(filepath.Join(c.sync, name)); return err == nil })
}

func (c *adoptCase) log() string {
	b, _ := os.ReadFile(c.env.Store.LogPath(c.id))
	return string(b)
}

// release lets the command finish.
func (c *adoptCase) release() {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.sync, "go"), nil, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// adoptedBy waits until the record names a live monitor other than old.
func (c *adoptCase) adoptedBy(old procid.Identity) procid.Identity {
	c.t.Helper()
	var now procid.Identity
	c.until("a new monitor", func() bool {
		j := c.get()
		now = j.Monitor
		return j.Status.Terminal() || now != old
	})
	return now
}

// ended waits for the job to end and checks what every adoption cell
// needs: ended once (one terminal transition), and the finalize step run
// wantSteps times.
func (c *adoptCase) ended(wantSteps int) *gitstate.Job {
	c.t.Helper()
	var j *gitstate.Job
	c.until("the job to end", func() bool { j = c.get(); return j.Status.Terminal() })
	ends := 0
	for _, h := range j.History {
		if h.To.Terminal() {
			ends++
		}
	}
	if ends != 1 {
		c.t.Errorf("job ended %d times: %+v", ends, j.History)
	}
	// The step's appends land before the job's end is claimed.
	steps, _ := os.ReadFile(filepath.Join(c.sync, "steps"))
	if n := strings.Count(string(steps), "\n"); n != wantSteps {
		c.t.Errorf("finalize step ran %d times, want %d; log:\n%s", n, wantSteps, c.log())
	}
	return j
}

// TestAdoptMonitorKilled: a monitor SIGKILLed while its command lives;
// a reaper pass adopts the job, which ends with the command's true
// outcome, each finalize step run once — whether the command ends after
// the adoption or before it (then only the recorder's file has the
// status, and the job is still not lost).
func TestAdoptMonitorKilled(t *testing.T) {
	for _, tc := range []struct {
		name          string
		exit          string
		releaseBefore bool
		status        gitstate.Status
		reason        string
		steps         int
	}{
		{"exit 0", "0", false, gitstate.Done, "exit code 0, every gate passed", 1},
		{"exit 3", "3", false, gitstate.Failed, "exit code 3", 0},
		{"ended before the pass", "0", true, gitstate.Done, "exit code 0, every gate passed", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAdoptCase(t)
			dead := c.startMonitorAndKill("CM_EXIT=" + tc.exit)
			if tc.releaseBefore {
				c.release()
				// The recorder writes the status, then exits: once its
				// group is gone, every process of the job is dead.
				c.until("the command's end", func() bool {
					l, _ := procid.GroupLiveness(dead.Command)
					return l == procid.Dead
				})
				if _, ok, err := c.env.Store.RecordedExit(c.id); !ok || err != nil {
					t.Fatalf("no exit status recorded with the monitor dead: %v", err)
				}
			}
			out := c.reap()
			if !strings.Contains(out, "adopt: started a new monitor") {
				t.Errorf("reap did not start an adopter:\n%s", out)
			}
			if !tc.releaseBefore {
				c.adoptedBy(dead.Monitor)
				c.release()
			}
			j := c.ended(tc.steps)
			if j.Status != tc.status || j.Reason != tc.reason || j.EndedBy != gitstate.EndedByMonitor {
				t.Errorf("job ended %s (%s) by %s, want %s (%s) by monitor", j.Status, j.Reason, j.EndedBy, tc.status, tc.reason)
			}
			if j.ExitCode == nil || tc.exit != strconv.Itoa(*j.ExitCode) {
				t.Errorf("exit code %v, want %s", j.ExitCode, tc.exit)
			}
			if j.Monitor == dead.Monitor {
				t.Errorf("the job still names its dead monitor")
			}
			if _, err := os.Stat(c.env.Store.ExitPath(c.id)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("exit status file left once the record holds it: %v", err)
			}
		})
	}
}

// TestAdoptCommandKilled: a command whose process group is killed (with
// its recorder) has no recorded status: the job is lost — ended by the
// reaper when the monitor died first, or by the adopter waiting for it.
func TestAdoptCommandKilled(t *testing.T) {
	t.Run("before adoption", func(t *testing.T) {
		c := newAdoptCase(t)
		dead := c.startMonitorAndKill()
		killGroup(t, dead.Command)
		out := c.reap()
		j := c.ended(0)
		if j.Status != gitstate.Failed || j.Reason != "lost" || j.EndedBy != gitstate.EndedByReaperDead {
			t.Errorf("job ended %s (%s) by %s, want failed (lost) by reaper:dead; reap said:\n%s", j.Status, j.Reason, j.EndedBy, out)
		}
	})
	t.Run("while adopted", func(t *testing.T) {
		c := newAdoptCase(t)
		dead := c.startMonitorAndKill()
		c.reap()
		c.adoptedBy(dead.Monitor)
		killGroup(t, dead.Command)
		j := c.ended(0)
		if j.Status != gitstate.Failed || j.Reason != "lost" || j.EndedBy != gitstate.EndedByMonitor || j.ExitCode != nil {
			t.Errorf("job ended %s (%s) by %s, exit code %v; want failed (lost) by its adopter, no exit code", j.Status, j.Reason, j.EndedBy, j.ExitCode)
		}
	})
}

// TestAdopterKilled: an adopter SIGKILLed while it waits for the command is
// itself a dead monitor: the next pass adopts the job again.
func TestAdopterKilled(t *testing.T) {
	c := newAdoptCase(t)
	dead := c.startMonitorAndKill()
	first := c.command(nil, "run", "--adopt", c.id)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if got := c.adoptedBy(dead.Monitor); got.PID != first.Process.Pid {
		t.Fatalf("the job was adopted by pid %d, not the adopter started (pid %d)", got.PID, first.Process.Pid)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	j := c.get()
	if out := c.reap(); !strings.Contains(out, "adopt: started a new monitor") {
		t.Errorf("reap did not adopt a job whose adopter died:\n%s", out)
	}
	second := c.adoptedBy(j.Monitor)
	if second.PID == first.Process.Pid || second.PID == dead.Monitor.PID {
		t.Errorf("not adopted again: monitor pid %d", second.PID)
	}
	c.release()
	j = c.ended(1)
	if j.Status != gitstate.Done || j.EndedBy != gitstate.EndedByMonitor {
		t.Errorf("job ended %s (%s) by %s, want done by its second adopter", j.Status, j.Reason, j.EndedBy)
	}
}

// TestAdoptersRace: 16 adopters started at once for one orphaned job:
// exactly one wins the compare-and-swap on the monitor identity; the
// others exit 3 having done nothing, and the job ends once with its
// finalize step run once.
func TestAdoptersRace(t *testing.T) {
	c := newAdoptCase(t)
	dead := c.startMonitorAndKill()
	const n = 16
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for i := 0; i < n; i++ {
		cmd := c.command(nil, "run", "--adopt", c.id)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for _, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	winner := c.adoptedBy(dead.Monitor)
	c.release()
	won, lost := 0, 0
	for i, cmd := range cmds {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			won++
			if cmd.Process.Pid != winner.PID {
				t.Errorf("adopter pid %d exited 0 but the record names pid %d", cmd.Process.Pid, winner.PID)
			}
		case errors.As(err, &ee) && ee.ExitCode() == 3 && strings.Contains(outs[i].String(), "not adoptable"):
			lost++
		default:
			t.Errorf("adopter %d: %v\n%s", i, err, outs[i])
		}
	}
	if won != 1 || lost != n-1 {
		t.Errorf("%d adopters won and %d lost, want 1 and %d", won, lost, n-1)
	}
	j := c.ended(1)
	if j.Status != gitstate.Done {
		t.Errorf("job ended %s (%s)", j.Status, j.Reason)
	}
	if got := strings.Count(c.log(), "adopted job"); got != 1 {
		t.Errorf("the log says %d adoptions, want 1", got)
	}
}

// killGroup SIGKILLs the process group led by leader, by identity, and
// waits until it is gone.
func killGroup(t *testing.T, leader procid.Identity) {
	t.Helper()
	if sent, err := procid.SignalGroup(leader, syscall.SIGKILL); !sent || err != nil {
		t.Fatalf("kill the command's process group: sent %v, %v", sent, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if l, _ := procid.GroupLiveness(leader); l == procid.Dead {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the command's process group lives on after SIGKILL")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finalizeSteps is the number of finalize steps of adoptFinToml's stage.
const finalizeSteps = 3

// adoptFinToml: the command commits and exits 0 at once; each of its
// three finalize steps k appends k to $CM_SYNC/ran, says it is in
// (in-k), waits for the test's go-k and exits with the number in exit-k
// (0 without one). Files, not the environment, steer the steps: an
// adopter's steps get the environment of whoever started the adopter.
var adoptFinToml = adoptFinTomlTimeout(0)

// adoptFinTomlTimeout is adoptFinToml with finalize_timeout_s = s (0: the
// default).
func adoptFinTomlTimeout(s int) string {
	var steps []string
	timeout := ""
	if s > 0 {
		timeout = fmt.Sprintf("finalize_timeout_s = %d\n", s)
	}
	for k := 1; k <= finalizeSteps; k++ {
		steps = append(steps, fmt.Sprintf(`'echo %[1]d >> "$CM_SYNC/ran"; touch "$CM_SYNC/in-%[1]d"; while [ ! -e "$CM_SYNC/go-%[1]d" ]; do sleep 0.01; done; exit $(cat "$CM_SYNC/exit-%[1]d" 2>/dev/null || echo 0)'`, k))
	}
	return `target = "main"

[reaper]
dead_ticks = 1
interval_s = 0

[[stages]]
name = "build"
run = 'git commit -q --allow-empty -m built'
gates = ["commits_ahead"]
finalize = [` + strings.Join(steps, ", ") + `]
` + timeout
}

// releaseStep lets finalize step k (from 1) finish.
func (c *adoptCase) releaseStep(k int) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.sync, fmt.Sprintf("go-%d", k)), nil, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// monitorCrash runs `orch-hooks run JOB` with ORCH_CRASHPOINT=point and
// waits for it to die there (SIGKILL); it returns the job as the dead
// monitor left it: running, with exit code 0 recorded.
func (c *adoptCase) monitorCrash(point string) *gitstate.Job {
	c.t.Helper()
	mon := c.command([]string{"ORCH_CRASHPOINT=" + point}, "run", c.id)
	out, err := mon.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		c.t.Fatalf("monitor: %v, want SIGKILL at %s; output:\n%s", err, point, out)
	}
	j := c.get()
	if j.Status != gitstate.Running || j.ExitCode == nil || *j.ExitCode != 0 {
		c.t.Fatalf("after the monitor's death at %s: %s, exit code %v; want running with exit code 0", point, j.Status, j.ExitCode)
	}
	return j
}

// stepsRan is what the finalize steps appended to $CM_SYNC/ran: their
// numbers, one a line, in the order they ran.
func (c *adoptCase) stepsRan() string {
	b, _ := os.ReadFile(filepath.Join(c.sync, "ran"))
	return strings.Join(strings.Fields(string(b)), " ")
}

// waitGroupGone waits until the process group led by leader is gone.
func (c *adoptCase) waitGroupGone(what string, leader procid.Identity) {
	c.t.Helper()
	c.until(what, func() bool { l, _ := procid.GroupLiveness(leader); return l == procid.Dead })
}

// endedOnce waits for the job to end and checks it ended once, with no
// finalize step's exit file left behind.
func (c *adoptCase) endedOnce() *gitstate.Job {
	c.t.Helper()
	var j *gitstate.Job
	c.until("the job to end", func() bool { j = c.get(); return j.Status.Terminal() })
	ends := 0
	for _, h := range j.History {
		if h.To.Terminal() {
			ends++
		}
	}
	if ends != 1 {
		c.t.Errorf("job ended %d times: %+v", ends, j.History)
	}
	return j
}

// TestAdoptFinalize: a monitor SIGKILLed inside its finalize steps, after
// exit code 0 is recorded, is adopted by a reaper pass; the job ends with
// its true outcome, ended by its adopter. The step the monitor died in
// (the last stamped started) is never run again: the adopter waits for it
// by identity and takes its outcome from its recorder — success goes on,
// failure fails the job, no recorded outcome (its group killed) fails it
// too. Every step after it runs exactly once.
func TestAdoptFinalize(t *testing.T) {
	for _, tc := range []struct {
		name  string
		point string
		// hold is the step left waiting when the monitor dies (0: none);
		// it is released once the job is adopted, unless kill or early.
		hold  int
		early bool // released and ended before the pass
		kill  bool // its process group killed before the pass
		fail  int  // a step that exits 4
		// What must come of it.
		status gitstate.Status
		reason string
		ran    string
	}{
		{name: "after the exit code", point: "run.exit_recorded",
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "in step 1, still running", point: "run.finalize_started", hold: 1,
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "in step 2, still running", point: "run.finalize_started:2", hold: 2,
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "in step 2, ended before the pass", point: "run.finalize_started:2", hold: 2, early: true,
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "in step 3 of 3", point: "run.finalize_started:3", hold: 3,
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "between steps 1 and 2", point: "run.finalize_step.0",
			status: gitstate.Done, reason: "exit code 0, every gate passed", ran: "1 2 3"},
		{name: "in step 2, which fails", point: "run.finalize_started:2", hold: 2, fail: 2,
			status: gitstate.Failed, reason: "failed: exit code 4", ran: "1 2"},
		{name: "in step 2, killed", point: "run.finalize_started:2", hold: 2, kill: true,
			status: gitstate.Failed, reason: "its outcome was not recorded; a step runs at most once, so it was not run again", ran: "1 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAdoptCaseWith(t, adoptFinToml)
			for k := 1; k <= finalizeSteps; k++ {
				if k != tc.hold {
					c.releaseStep(k)
				}
			}
			if tc.fail > 0 {
				if err := os.WriteFile(filepath.Join(c.sync, fmt.Sprintf("exit-%d", tc.fail)), []byte("4\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dead := c.monitorCrash(tc.point)
			if tc.hold > 0 {
				c.waitFile(fmt.Sprintf("in-%d", tc.hold))
				if dead.FinalizeStep != tc.hold || dead.Finalizer.IsZero() {
					t.Fatalf("the dead monitor left finalize step %d, finalizer %v; want step %d stamped with its process", dead.FinalizeStep, dead.Finalizer, tc.hold)
				}
			}
			switch {
			case tc.kill:
				killGroup(t, dead.Finalizer)
			case tc.early:
				c.releaseStep(tc.hold)
				c.waitGroupGone("the step's end", dead.Finalizer)
			}
			if out := c.reap(); !strings.Contains(out, "adopt: started a new monitor: monitor dead in its finalize steps") {
				t.Fatalf("reap did not start an adopter:\n%s", out)
			}
			c.adoptedBy(dead.Monitor)
			if tc.hold > 0 && !tc.kill && !tc.early {
				// The step outlived its monitor: the adopter waits for it.
				if j := c.get(); j.Status.Terminal() {
					t.Fatalf("the adopter ended the job (%s: %s) while step %d still ran", j.Status, j.Reason, tc.hold)
				}
				c.releaseStep(tc.hold)
			}
			j := c.endedOnce()
			if j.Status != tc.status || !strings.Contains(j.Reason, tc.reason) || j.EndedBy != gitstate.EndedByMonitor {
				t.Errorf("job ended %s (%s) by %s, want %s (…%s) by monitor; log:\n%s", j.Status, j.Reason, j.EndedBy, tc.status, tc.reason, c.log())
			}
			if got := c.stepsRan(); got != tc.ran {
				t.Errorf("finalize steps ran %q, want %q (each at most once); log:\n%s", got, tc.ran, c.log())
			}
			if j.ExitCode == nil || *j.ExitCode != 0 || j.Monitor == dead.Monitor || j.Adoptions != 1 {
				t.Errorf("exit code %v, monitor %v (dead one %v), adoptions %d; want 0, a new monitor, 1", j.ExitCode, j.Monitor, dead.Monitor, j.Adoptions)
			}
			if got := strings.Count(c.log(), "adopted job"); got != 1 {
				t.Errorf("the log says %d adoptions, want 1", got)
			}
			// The adopter removes them just after its claim.
			c.until("the finalize steps' exit files removed", func() bool {
				for k := 1; k <= finalizeSteps; k++ {
					if _, err := os.Lstat(c.env.Store.StepExitPath(c.id, k)); !errors.Is(err, os.ErrNotExist) {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestAdopterKilledInFinalize: an adopter SIGKILLed as it starts a finalize
// step is a dead monitor in its turn: the next pass adopts the job again,
// and the new adopter waits out the step the first one started; every step
// runs once.
func TestAdopterKilledInFinalize(t *testing.T) {
	c := newAdoptCaseWith(t, adoptFinToml)
	c.releaseStep(3)
	dead := c.monitorCrash("run.finalize_started") // in step 1, which waits
	c.waitFile("in-1")
	// The first adopter dies as it starts step 2, which then waits.
	first := c.command([]string{"ORCH_CRASHPOINT=run.finalize_started"}, "run", "--adopt", c.id)
	var out strings.Builder
	first.Stdout, first.Stderr = &out, &out
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if got := c.adoptedBy(dead.Monitor); got.PID != first.Process.Pid {
		t.Fatalf("the job was adopted by pid %d, not the adopter started (pid %d)", got.PID, first.Process.Pid)
	}
	c.releaseStep(1)
	err := first.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("first adopter: %v, want SIGKILL as it started step 2; output:\n%s", err, out.String())
	}
	c.waitFile("in-2")
	j := c.get()
	if j.Status != gitstate.Running || j.FinalizeStep != 2 || j.Adoptions != 1 {
		t.Fatalf("after the first adopter's death: %s, finalize step %d, adoptions %d; want running in step 2, adopted once", j.Status, j.FinalizeStep, j.Adoptions)
	}
	if out := c.reap(); !strings.Contains(out, "adopt: started a new monitor") {
		t.Fatalf("reap did not adopt a job whose adopter died:\n%s", out)
	}
	second := c.adoptedBy(j.Monitor)
	if second.PID == first.Process.Pid || second.PID == dead.Monitor.PID {
		t.Fatalf("not adopted again: monitor pid %d", second.PID)
	}
	c.releaseStep(2)
	j = c.endedOnce()
	if j.Status != gitstate.Done || j.EndedBy != gitstate.EndedByMonitor || j.Adoptions != 2 {
		t.Errorf("job ended %s (%s) by %s after %d adoptions, want done by its second adopter", j.Status, j.Reason, j.EndedBy, j.Adoptions)
	}
	if got := c.stepsRan(); got != "1 2 3" {
		t.Errorf("finalize steps ran %q, want \"1 2 3\"; log:\n%s", got, c.log())
	}
}

// TestAdoptersRaceInFinalize: 16 adopters started at once for a job whose
// monitor died in a finalize step: one wins, the others exit 3 having done
// nothing, and each step runs once.
func TestAdoptersRaceInFinalize(t *testing.T) {
	c := newAdoptCaseWith(t, adoptFinToml)
	c.releaseStep(1)
	c.releaseStep(3)
	dead := c.monitorCrash("run.finalize_started:2")
	c.waitFile("in-2")
	const n = 16
	var cmds []*exec.Cmd
	var outs []*strings.Builder
	for i := 0; i < n; i++ {
		cmd := c.command(nil, "run", "--adopt", c.id)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for _, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	winner := c.adoptedBy(dead.Monitor)
	c.releaseStep(2)
	won, lost := 0, 0
	for i, cmd := range cmds {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			won++
			if cmd.Process.Pid != winner.PID {
				t.Errorf("adopter pid %d exited 0 but the record names pid %d", cmd.Process.Pid, winner.PID)
			}
		case errors.As(err, &ee) && ee.ExitCode() == 3 && strings.Contains(outs[i].String(), "not adoptable"):
			lost++
		default:
			t.Errorf("adopter %d: %v\n%s", i, err, outs[i])
		}
	}
	if won != 1 || lost != n-1 {
		t.Errorf("%d adopters won and %d lost, want 1 and %d", won, lost, n-1)
	}
	j := c.endedOnce()
	if j.Status != gitstate.Done || j.Adoptions != 1 {
		t.Errorf("job ended %s (%s) after %d adoptions, want done after 1", j.Status, j.Reason, j.Adoptions)
	}
	if got := c.stepsRan(); got != "1 2 3" {
		t.Errorf("finalize steps ran %q, want \"1 2 3\"", got)
	}
}

// TestAdoptionsExhausted: adopters that keep dying are not replaced
// forever. After pipeline.MaxAdoptions of them the reaper's tier 2 ends
// the job (its gates decide, as for any job tier 2 finalizes), and the
// steps no adopter got to are not run.
func TestAdoptionsExhausted(t *testing.T) {
	c := newAdoptCaseWith(t, adoptFinToml)
	for k := 1; k <= finalizeSteps; k++ {
		c.releaseStep(k)
	}
	dead := c.monitorCrash("run.finalize_started")
	c.waitGroupGone("step 1's end", dead.Finalizer)
	prev := dead.Monitor
	for i := 1; i <= pipeline.MaxAdoptions; i++ {
		// Its adopter inherits the crash point: it dies once it has won.
		if out, err := c.command([]string{"ORCH_CRASHPOINT=adopt.claimed"}, "reap").CombinedOutput(); err != nil || !strings.Contains(string(out), "adopt: started a new monitor") {
			t.Fatalf("pass %d: %v, want an adopter started:\n%s", i, err, out)
		}
		m := c.adoptedBy(prev)
		c.until("the adopter's death", func() bool { l, _ := procid.Check(m); return l == procid.Dead })
		prev = m
	}
	if j := c.get(); j.Adoptions != pipeline.MaxAdoptions || j.Status != gitstate.Running {
		t.Fatalf("%s after %d adoptions, want running after %d", j.Status, j.Adoptions, pipeline.MaxAdoptions)
	}
	out := c.reap()
	if strings.Contains(out, "adopt:") || !strings.Contains(out, c.id+": exit_code: done") {
		t.Errorf("reap after %d adoptions: want tier 2, no adopter:\n%s", pipeline.MaxAdoptions, out)
	}
	j := c.endedOnce()
	if j.EndedBy != gitstate.EndedByReaperExitCode {
		t.Errorf("job ended %s (%s) by %s, want by %s", j.Status, j.Reason, j.EndedBy, gitstate.EndedByReaperExitCode)
	}
	if got := c.stepsRan(); got != "1" {
		t.Errorf("finalize steps ran %q, want only step 1 (none re-run, none run by the reaper)", got)
	}
}

// TestAdoptFinalizeStepTimeout: a step that outlives its monitor and runs
// past its finalize_timeout_s is stopped by the adopter (its process group,
// by identity), which fails the job for it; the steps after it never run.
func TestAdoptFinalizeStepTimeout(t *testing.T) {
	c := newAdoptCaseWith(t, adoptFinTomlTimeout(2))
	c.releaseStep(1)
	c.releaseStep(3)
	dead := c.monitorCrash("run.finalize_started:2") // step 2 never released
	c.waitFile("in-2")
	if out := c.reap(); !strings.Contains(out, "adopt: started a new monitor") {
		t.Fatalf("reap did not start an adopter:\n%s", out)
	}
	j := c.endedOnce()
	if j.Status != gitstate.Failed || !strings.Contains(j.Reason, "timed out after 2s") || j.EndedBy != gitstate.EndedByMonitor {
		t.Errorf("job ended %s (%s) by %s, want failed (… timed out after 2s) by its adopter; log:\n%s", j.Status, j.Reason, j.EndedBy, c.log())
	}
	if l, _ := procid.GroupLiveness(dead.Finalizer); l != procid.Dead {
		t.Errorf("step 2's process group is %s after the job ended, want dead", l)
	}
	if got := c.stepsRan(); got != "1 2" {
		t.Errorf("finalize steps ran %q, want \"1 2\"", got)
	}
}
