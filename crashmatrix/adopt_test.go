package crashmatrix_test

import (
	"errors"
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
	cli := cliBinary(t)
	repo, env := newWorld(t, adoptToml)
	j, _, err := env.Enqueue(pipeline.Request{Task: "t", Branch: "feat/t", Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	c := &adoptCase{t: t, repo: repo, env: env, cli: cli, sync: t.TempDir(), id: j.ID}
	// Whatever a failed cell leaves running ends: the command (and with
	// it any adopter waiting for it) by its process group's identity.
	t.Cleanup(func() {
		if j, err := env.Store.Get(c.id); err == nil && !j.Command.IsZero() {
			procid.SignalGroup(j.Command, syscall.SIGKILL)
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
