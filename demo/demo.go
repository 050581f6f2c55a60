// Package demo builds a scratch repository and drives the real orch-hooks
// binary through the whole pipeline, including a job whose monitor and
// command are killed with SIGKILL and recovered by the reaper. Every step
// is a real command, printed as a user would type it.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

const orchToml = `# orch-hooks demo pipeline
target = "main"
max_concurrency = 1

[reaper]
# Small numbers so the demo's reaper acts at once; see orch.toml.example.
dead_ticks = 2
interval_s = 0

[[stages]]
name = "implement"
run = "./agent.sh"
gates = ["commits_ahead", "clean_worktree"]
next = "review"

[[stages]]
name = "review"
run = "echo reviewing $ORCH_BRANCH"
gates = ["cmd:test -s \"$(echo $ORCH_TASK | tr / -).txt\"", "mergeable"]
next = "merge"

[[stages]]
name = "merge"
kind = "merge"      # merge finalization under the target's lease
gates = ["mergeable"]
`

const agentSh = `#!/bin/sh
# A stand-in for a coding agent: writes a file named after its task and
# commits it. With DEMO_HOLD set it first signals that it started and then
# works "forever", so the demo can kill it mid-run.
set -e
if [ -n "$DEMO_HOLD" ]; then
	touch "$DEMO_HOLD"
	sleep 600
fi
f="$(echo "$ORCH_TASK" | tr / -).txt"
echo "work for $ORCH_TASK" > "$f"
git add "$f"
git commit -q -m "$ORCH_TASK: implement"
echo "committed $f"
`

// Run builds the scratch repository in a new temporary directory and runs
// the demo with the orch-hooks binary exe, printing to out. The directory
// is left for the user to look at.
func Run(ctx context.Context, exe string, out io.Writer) error {
	dir, err := os.MkdirTemp("", "orch-hooks-demo-")
	if err != nil {
		return err
	}
	d := &demo{ctx: ctx, exe: exe, out: out, dir: filepath.Join(dir, "repo")}
	return d.run()
}

type demo struct {
	ctx context.Context
	exe string
	out io.Writer
	dir string
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "\n# "+format+"\n", args...)
}

// sh runs a command in the demo repository, echoing it and its output.
func (d *demo) sh(env []string, name string, args ...string) (string, error) {
	shown := name
	if name == d.exe {
		shown = "orch-hooks"
	}
	fmt.Fprintf(d.out, "$ %s %s\n", shown, strings.Join(args, " "))
	cmd := exec.CommandContext(d.ctx, name, args...)
	cmd.Dir = d.dir
	cmd.Env = append(gitstate.GitEnv(), env...)
	var stdout bytes.Buffer
	cmd.Stdout = io.MultiWriter(&stdout, d.out)
	cmd.Stderr = d.out
	err := cmd.Run()
	return strings.TrimSpace(stdout.String()), err
}

func (d *demo) orch(args ...string) (string, error) { return d.sh(nil, d.exe, args...) }

// must runs an orch-hooks command that has to succeed.
func (d *demo) must(args ...string) (string, error) {
	out, err := d.orch(args...)
	if err != nil {
		return out, fmt.Errorf("orch-hooks %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

func (d *demo) git(args ...string) error {
	cmd := exec.CommandContext(d.ctx, "git", args...)
	cmd.Dir = d.dir
	cmd.Env = gitstate.GitEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *demo) run() error {
	fmt.Fprintf(d.out, "orch-hooks demo: a scratch repository in %s\n", d.dir)
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"config", "user.name", "orch-hooks demo"},
		{"config", "user.email", "demo@orch-hooks.invalid"},
	} {
		if err := d.git(args...); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(d.dir, "agent.sh"), []byte(agentSh), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, "README"), []byte("demo repository\n"), 0o644); err != nil {
		return err
	}
	if err := d.git("add", "agent.sh", "README"); err != nil {
		return err
	}
	if err := d.git("commit", "-q", "-m", "initial commit"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, "orch.toml"), []byte(orchToml), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "\norch.toml:\n%s", indent(orchToml))

	d.say("1. A task runs through implement (agent.sh commits) and review (gated by a cmd: check); its merge job waits in the queue.")
	if _, err := d.must("init"); err != nil {
		return err
	}
	id, err := d.must("enqueue", "--branch", "feat/login")
	if err != nil {
		return err
	}
	loginMerge, err := d.runChain(id, "merge")
	if err != nil {
		return err
	}
	if _, err := d.must("status"); err != nil {
		return err
	}

	d.say("2. A second task's monitor and command are killed with SIGKILL mid-run (a crash, an OOM kill, a closed laptop).")
	crash, err := d.must("enqueue", "--branch", "feat/crash")
	if err != nil {
		return err
	}
	if err := d.crashRun(crash); err != nil {
		return err
	}
	d.say("The job still says running: nobody is left to say otherwise.")
	if _, err := d.must("status"); err != nil {
		return err
	}

	d.say("3. The reaper confirms every process of the job dead, by (boot id, pid, start time), on dead_ticks = 2 passes, and ends it.")
	for i := 0; i < 2; i++ {
		if _, err := d.must("reap"); err != nil {
			return err
		}
	}
	if _, err := d.must("show", crash); err != nil {
		return err
	}

	d.say("4. The failed job is retried as attempt 2, which runs through implement and review.")
	retry, err := d.must("retry", crash)
	if err != nil {
		return err
	}
	crashMerge, err := d.runChain(retry, "merge")
	if err != nil {
		return err
	}

	d.say("5. Both merge jobs run, one at a time under main's lease: a fast-forward, then a real merge commit.")
	for _, id := range []string{loginMerge, crashMerge} {
		if _, err := d.runChain(id, ""); err != nil {
			return err
		}
	}

	d.say("6. Merging again changes nothing: merge finalization reads the graph first.")
	if _, err := d.must("merge", "--branch", "feat/crash"); err != nil {
		return err
	}

	d.say("Every job, and main with both tasks merged once:")
	if _, err := d.must("status", "--all"); err != nil {
		return err
	}
	if _, err := d.sh(nil, "git", "log", "--graph", "--oneline", "main"); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "\nThe repository is left in %s; its state is in %s.\n", d.dir, filepath.Join(d.dir, ".git", "orch"))
	return nil
}

// runChain runs job id and then every job it advances to, in turn, up to
// a job of stage stopAt, which it returns without running.
func (d *demo) runChain(id, stopAt string) (string, error) {
	for id != "" {
		j, err := d.record(id)
		if err != nil {
			return "", err
		}
		if j.Stage == stopAt {
			return id, nil
		}
		if _, err := d.must("run", id); err != nil {
			return "", err
		}
		if j, err = d.record(id); err != nil {
			return "", err
		}
		id = j.NextJob
	}
	return "", nil
}

func (d *demo) record(id string) (*gitstate.Job, error) {
	s, err := gitstate.OpenStore(filepath.Join(d.dir, ".git", gitstate.StateDirName))
	if err != nil {
		return nil, err
	}
	return s.Get(id)
}

// crashRun starts `orch-hooks run id` with an agent that holds, waits until
// the agent has started and its pid is stamped, and kills the monitor and
// the command's process group with SIGKILL.
func (d *demo) crashRun(id string) error {
	hold := filepath.Join(filepath.Dir(d.dir), "agent-started")
	fmt.Fprintf(d.out, "$ DEMO_HOLD=%s orch-hooks run %s &\n", hold, id)
	cmd := exec.CommandContext(d.ctx, d.exe, "run", id)
	cmd.Dir = d.dir
	cmd.Env = append(gitstate.GitEnv(), "DEMO_HOLD="+hold)
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	var j *gitstate.Job
	// The agent touches the file once it runs; the monitor stamps the
	// command's pid right after starting it. Poll for both, bounded.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if _, serr := os.Stat(hold); serr == nil {
			if j, err = d.record(id); err == nil && j.PGID != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return errors.New("the held agent did not start within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(d.out, "$ kill -9 %d       # the monitor\n", j.Monitor.PID)
	// By the identities the record holds: the demo kills only what it
	// started, never a pid that has since been reused.
	if ok, err := procid.Signal(j.Monitor, syscall.SIGKILL); !ok {
		return fmt.Errorf("the monitor %s was not killed: %v", j.Monitor, err)
	}
	fmt.Fprintf(d.out, "$ kill -9 -%d      # the agent's process group\n", j.PGID)
	if ok, err := procid.SignalGroup(j.Command, syscall.SIGKILL); !ok {
		return fmt.Errorf("the agent's process group %d was not killed: %v", j.PGID, err)
	}
	cmd.Wait()
	return nil
}

func indent(s string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		b.WriteString("    " + sc.Text() + "\n")
	}
	return b.String()
}
