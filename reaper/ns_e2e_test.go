package reaper_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
)

// buildBinary builds orch-hooks into a temporary directory, skipping the
// test when there is no go command to do it.
func buildBinary(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build orch-hooks with")
	}
	exe := filepath.Join(t.TempDir(), "orch-hooks")
	out, err := exec.Command(gobin, "build", "-o", exe, "github.com/orch-hooks/orch-hooks/cmd/orch-hooks").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// nsJobToml: the job's command says it started on the fifo "started" and
// waits until the fifo "go" is opened and closed by the test.
const nsJobToml = `target = "main"

[[stages]]
name = "build"
run = 'echo started >"$SYNC/started"; cat "$SYNC/go"'
`

// End to end, with the built binary: a job whose monitor runs inside
// `unshare --pid --fork --mount-proc` (pid 1 there, its command pid 2 or
// so: pids that name other processes here) is left alone by `orch-hooks
// reap` outside with dead_ticks = 1 while it runs, and ends done by its
// own monitor. The reverse: a host job is left alone by a reap inside the
// namespace. And `orch-hooks run` in a pid namespace whose /proc is its
// parent's refuses before claiming the job.
func TestMonitorInPidNamespaceNotReaped(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skipf("pid and time namespaces are Linux's; this is %s", runtime.GOOS)
	}
	flags := []string{"--pid", "--fork", "--mount-proc"}
	if out, err := exec.Command("unshare", append(flags, "true")...).CombinedOutput(); err != nil {
		t.Skipf("unshare %s does not work here (needs root or user namespaces): %v: %s", strings.Join(flags, " "), err, out)
	}
	exe := buildBinary(t)
	repo, env := pipelinetest.New(t, nsJobToml)
	sync := t.TempDir()
	for _, name := range []string{"started", "go"} {
		if err := syscall.Mkfifo(filepath.Join(sync, name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	environ := append(gittest.Env(t.TempDir()), "SYNC="+sync,
		"ORCH_REAPER_DEAD_TICKS=1", "ORCH_REAPER_INTERVAL_S=0", "ORCH_REAPER_FINALIZE_GRACE_S=0")
	command := func(args ...string) *exec.Cmd {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir, cmd.Env = repo.Dir, environ
		return cmd
	}
	enqueue := func(branch string) string {
		j, _, err := env.Enqueue(pipeline.Request{Branch: branch, Stage: "build"})
		if err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	status := func(id string) *gitstate.Job {
		j, err := env.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	// run starts `orch-hooks run id` (under prefix) and returns once its
	// command has started.
	run := func(id string, prefix ...string) *exec.Cmd {
		cmd := command(append(prefix, exe, "run", id)...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		})
		f, err := os.Open(filepath.Join(sync, "started")) // blocks until the command opens it
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if line, err := bufio.NewReader(f).ReadString('\n'); line != "started\n" {
			t.Fatalf("job %s: command said %q, %v", id, line, err)
		}
		return cmd
	}
	// release lets the running command end, and waits for its monitor.
	release := func(id string, cmd *exec.Cmd) {
		f, err := os.OpenFile(filepath.Join(sync, "go"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("orch-hooks run %s: %v", id, err)
		}
		if j := status(id); j.Status != gitstate.Done {
			t.Fatalf("job %s after its command ended: %s %q; want done", id, j.Status, j.Reason)
		}
	}
	reap := func(prefix ...string) string {
		out, err := command(append(prefix, exe, "reap")...).CombinedOutput()
		if err != nil {
			t.Fatalf("reap %v: %v\n%s", prefix, err, out)
		}
		return string(out)
	}
	unshare := append([]string{"unshare"}, append(flags, "--kill-child")...)

	// Inside, judged from outside.
	a := enqueue("feat/inside")
	mon := run(a, unshare...)
	j := status(a)
	if j.Status != gitstate.Running || j.Monitor.PID != 1 {
		t.Fatalf("job %s: %s, monitor %+v; want running with monitor pid 1 (of its namespace)", a, j.Status, j.Monitor)
	}
	for i := 0; i < 2; i++ {
		out := reap()
		if j := status(a); j.Status != gitstate.Running {
			t.Fatalf("pass %d outside: job %s %s %q (%s); want still running: its monitor lives in another pid namespace", i, a, j.Status, j.Reason, out)
		}
	}
	release(a, mon)

	// Outside, judged from inside.
	b := enqueue("feat/outside")
	mon = run(b)
	for i := 0; i < 2; i++ {
		out := reap(unshare...)
		if j := status(b); j.Status != gitstate.Running {
			t.Fatalf("pass %d inside: job %s %s %q (%s); want still running: its monitor lives outside", i, b, j.Status, j.Reason, out)
		}
	}
	release(b, mon)

	// A pid namespace without its own /proc: no identity, no claim.
	c := enqueue("feat/noproc")
	// Should it claim and start the command instead, the command would
	// wait on the fifo forever: the deadline ends the namespace then.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	noproc := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--kill-child", exe, "run", c)
	noproc.Dir, noproc.Env = repo.Dir, environ
	out, err := noproc.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--mount-proc") {
		t.Errorf("orch-hooks run with its parent namespace's /proc: %v\n%s\nwant a failure naming the fix (--mount-proc)", err, out)
	}
	if j := status(c); j.Status != gitstate.Queued || !j.Monitor.IsZero() {
		t.Errorf("job %s after the refused run: %s, monitor %+v; want still queued, unclaimed", c, j.Status, j.Monitor)
	}
}
