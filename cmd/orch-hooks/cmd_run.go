//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands,
		&command{name: "run", args: "JOB", summary: "run and monitor JOB in the foreground",
			help: `Claims the queued job, runs its stage command with sh -c in the task's
worktree (created on demand), records its exit code, runs the stage's
finalize steps, evaluates the gates, ends the job done or failed and, when
done, enqueues the next stage. The command's output goes to the job's log
(orch-hooks logs JOB). Ctrl-C passes TERM to the command; the job then ends
failed with the command's exit status. Exits 0 when the job ends done, 3
when it ends failed or was not queued, 1 on an operational error.

run --adopt JOB takes over a running job whose monitor died while its
command lived on: it waits for the command, records the exit status the
command's recorder wrote, runs the finalize steps and ends the job as the
monitor would have. In remote mode, run JOB claims the shared job first
when it is not queued here yet; the job then beats its record on the
remote, and its end, next stage and branch land there when it ends.
A monitor that died in its finalize steps (exit code 0
recorded) is taken over the same way: the adopter waits out the step that
was running and takes its recorded outcome (a step is never run twice),
then runs the steps after it and ends the job. reap, watch, hooks and
dispatch start it themselves, detached; of several adopters one wins, the
others exit 3 doing nothing.`,
			setup: setupRun},
		&command{name: "dispatch", args: "", summary: "start queued jobs, detached, up to max_concurrency",
			help: `Starts queued jobs, oldest first, each under a detached monitor (its own
session: this command may exit, the job goes on), while the jobs running on
this host are fewer than max_concurrency. Prints the started job ids.
First it starts a new monitor (run --adopt, detached) for each running job
whose monitor died while its outcome could still be had, and says so on
stderr: "JOB: adopt: started a new monitor: WHY". --json prints
{"started": [ids], "adopted": [{"job", "why"}]} instead.

In remote mode ([remote] name in orch.toml) it first makes one pass over
the shared queue: expires running jobs whose record this machine has seen
unchanged for heartbeat_ttl_s, settles ends of this machine's jobs that
had not reached the remote, and claims queued shared jobs, oldest first,
while this machine has fewer than max_concurrency of them queued or
running; each claimed job becomes a local queued job (its branch brought
from the remote) that the dispatch then starts. Those are said on stderr
("JOB: claimed from REMOTE"); --json adds "claimed", "expired",
"settled" and "errors".`,
			setup: setupDispatch},
		&command{name: "logs", args: "JOB [-f] [--raw]", summary: "the job's output",
			help: `Prints the job's output file. On a terminal its control characters are
escaped (an agent's output could otherwise set the clipboard, the title or
clear the screen); piped, or with --raw, it is copied byte for byte.`,
			setup: setupLogs},
		&command{name: "retry", args: "JOB", summary: "enqueue the next attempt of a failed or cancelled job; print its id", setup: setupRetry},
		&command{name: "gate", args: "(JOB | --stage S --branch B [--target T]) [--json]", summary: "evaluate a stage's quality gates, read-only",
			help: `Evaluates every gate of the stage for the branch and prints each result;
exits 3 when any gate fails. Read-only: no record and no ref changes.
cmd: gates run in the worktree that has the branch checked out, or, when
none has, in the current worktree (as in a CI checkout).`,
			setup: setupGate},
	)
}

func setupRun(fs *flag.FlagSet, c *cli) func([]string) error {
	adopt := fs.Bool("adopt", false, "take over a running job whose monitor died while its command lived (what reap, watch and dispatch start; exits 3 when another adopter won or none is needed)")
	return func(args []string) error {
		if err := needArgs("run", args, 1, 1, "one job id"); err != nil {
			return err
		}
		claimed := readyReporter()
		env, err := c.env()
		if err != nil {
			claimed(err)
			return err
		}
		env.Store.Actor = "monitor"
		var res pipeline.Result
		if *adopt {
			res, err = env.Adopt(c.ctx, args[0])
			if errors.Is(err, pipeline.ErrNotAdoptable) {
				return withCode(exitNo, err)
			}
		} else {
			if env.Shared != nil {
				if err := c.claimSharedForRun(env, args[0]); err != nil {
					claimed(err)
					return err
				}
			}
			res, err = env.Run(c.ctx, args[0], pipeline.RunOptions{Claimed: claimed})
		}
		if err != nil {
			return jobLookupError(err)
		}
		j := res.Job
		if j.Status == gitstate.Done {
			c.errf("%s: done (%s)\n", j.ID, termtext.Line(j.Reason))
			if res.Worktree != "" {
				c.errf("%s\n", res.Worktree)
			}
			if res.Next != nil {
				c.errf("next: %s\n", res.Next.ID)
			}
			return nil
		}
		return withCode(exitNo, fmt.Errorf("%s: %s (%s); output: orch-hooks logs %s", j.ID, j.Status, dash(termtext.Line(j.Reason)), j.ID))
	}
}

// claimSharedForRun is run JOB in remote mode: a job with no local record
// here is claimed from the shared queue first (and queued here), so the
// run below runs it; one already here (claimed by a dispatch on this
// machine, which starts run JOB as its monitor) is run as it is.
func (c *cli) claimSharedForRun(env *pipeline.Env, id string) error {
	_, err := env.Store.Get(id)
	if !errors.Is(err, gitstate.ErrNotFound) {
		return nil // the run reports what it finds
	}
	if _, err := env.ClaimShared(c.ctx, id); err != nil {
		switch {
		case errors.Is(err, remotejob.ErrTaken):
			return withCode(exitNo, fmt.Errorf("%w; orch-hooks status shows where it runs", err))
		case errors.Is(err, remotejob.ErrNotFound):
			return withCode(exitNo, fmt.Errorf("run %s: no such job here or on %s (orch-hooks status lists the shared queue)", id, env.Shared.Queue.Store.Remote()))
		}
		return err
	}
	c.errf("%s: claimed from %s as %s\n", id, env.Shared.Queue.Store.Remote(), termtext.Line(env.Shared.Queue.Host))
	return nil
}

// sharedPass runs remote mode's part of dispatch or reap
// (pipeline.Env.SharedPass) and says what it did on stderr, one line per
// job; a pass that could not run (the remote unreachable) is returned, the
// caller's local pass still goes on.
func (c *cli) sharedPass(env *pipeline.Env, capacity int, quiet bool) (pipeline.SharedReport, error) {
	rep, err := env.SharedPass(c.ctx, capacity)
	if quiet {
		return rep, err
	}
	remote := env.Shared.Queue.Store.Remote()
	for _, line := range sharedPassLines(rep, remote) {
		c.errf("%s\n", line)
	}
	for _, id := range rep.Claimed {
		c.errf("%s: claimed from %s\n", id, remote)
	}
	for _, e := range rep.Errors {
		c.errf("error: shared queue: %s\n", termtext.Line(e.Error()))
	}
	if err != nil {
		c.errf("error: shared queue on %s: %s\n", remote, termtext.Line(err.Error()))
	}
	return rep, err
}

// sharedJSON is a SharedReport as --json prints it.
func sharedJSON(rep pipeline.SharedReport, err error) map[string]any {
	type expiry struct {
		ID         string  `json:"id"`
		Host       string  `json:"host"`
		UnchangedS float64 `json:"unchanged_s"`
		Won        bool    `json:"won"`
		Error      string  `json:"error,omitempty"`
	}
	expired := []expiry{}
	for _, x := range rep.Expired {
		e := expiry{ID: x.ID, Host: x.Host, UnchangedS: x.Unchanged.Seconds(), Won: x.Won}
		if x.Err != nil {
			e.Error = x.Err.Error()
		}
		expired = append(expired, e)
	}
	errs := []string{}
	for _, e := range rep.Errors {
		errs = append(errs, e.Error())
	}
	if err != nil {
		errs = append(errs, err.Error())
	}
	orEmpty := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	return map[string]any{"claimed": orEmpty(rep.Claimed), "expired": expired, "settled": orEmpty(rep.Settled), "errors": errs}
}

// readyReporter returns the callback through which a monitor started by
// dispatch reports its claim on the inherited descriptor (pipeline.ReadyFDEnv);
// without one it does nothing.
func readyReporter() func(error) {
	fdStr := os.Getenv(pipeline.ReadyFDEnv)
	os.Unsetenv(pipeline.ReadyFDEnv) // not for the job's command
	fd, err := strconv.Atoi(fdStr)
	if err != nil || fd < 3 {
		return func(error) {}
	}
	f := os.NewFile(uintptr(fd), "ready")
	done := false
	return func(err error) {
		if done || f == nil {
			return
		}
		done = true
		if err != nil {
			fmt.Fprintf(f, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Fprintln(f, "ok")
		}
		f.Close()
	}
}

func setupDispatch(fs *flag.FlagSet, c *cli) func([]string) error {
	asJSON := fs.Bool("json", false, "print {\"started\": [...], \"adopted\": [...]} as JSON")
	return func(args []string) error {
		if err := needArgs("dispatch", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("dispatch: find own executable: %w", err)
		}
		// Remote mode: claim shared jobs up to max_concurrency first;
		// each is a local queued job the dispatch below starts.
		var rep pipeline.SharedReport
		var sharedErr error
		if env.Shared != nil {
			rep, sharedErr = c.sharedPass(env, env.Config.MaxConcurrency, *asJSON)
		}
		d, err := env.DispatchAll(c.ctx, env.StartMonitor(exe, env.MonitorArgs()...))
		err = errors.Join(sharedErr, err)
		if *asJSON {
			started, adopted := d.Started, d.Adopted
			if started == nil {
				started = []string{}
			}
			if adopted == nil {
				adopted = []pipeline.Adoption{}
			}
			out := map[string]any{"started": started, "adopted": adopted}
			if env.Shared != nil {
				for k, v := range sharedJSON(rep, sharedErr) {
					out[k] = v
				}
			}
			if jerr := writeJSON(c.stdout, out); jerr != nil {
				return errors.Join(err, jerr)
			}
			return err
		}
		// Started ids alone on stdout, for scripts; the adoptions, like
		// a reaper pass's, on stderr.
		for _, a := range d.Adopted {
			c.errf("%s: adopt: started a new monitor: %s\n", a.Job, termtext.Line(a.Why))
		}
		for _, id := range d.Started {
			fmt.Fprintln(c.stdout, id)
		}
		if len(d.Started) == 0 && err == nil {
			c.errf("nothing to start (no queued job, or max_concurrency = %d reached)\n", env.Config.MaxConcurrency)
		}
		return err
	}
}

func setupLogs(fs *flag.FlagSet, c *cli) func([]string) error {
	follow := fs.Bool("f", false, "follow: keep printing new output until the job has ended")
	raw := fs.Bool("raw", false, "copy the output byte for byte, control characters included, even to a terminal")
	return func(args []string) error {
		if err := needArgs("logs", args, 1, 1, "one job id"); err != nil {
			return err
		}
		s, err := c.openStore()
		if err != nil {
			return err
		}
		if _, err := s.Get(args[0]); err != nil {
			if errors.Is(err, gitstate.ErrNotFound) && c.remoteMode() {
				return c.remoteLogsElsewhere(args[0], err)
			}
			return jobLookupError(err)
		}
		// Piped, the output is the agent's, byte for byte, like cat; on a
		// terminal it is escaped, as everything else we print.
		out := c.stdout
		if *raw || !isTerminal(c.rawStdout) {
			out = c.rawStdout
		}
		// The cut line names the cap when the config can be read; the
		// log itself is readable without it.
		var capBytes int64
		if cfg, err := c.loadConfig(); err == nil {
			capBytes = int64(cfg.Logs.MaxBytes)
		}
		// Holes the monitor punched (the size cap) read as one line each.
		var r *pipeline.LogReader
		f, err := statefile.Open(s.LogPath(args[0]), os.O_RDONLY, 0)
		if err == nil {
			r = pipeline.NewLogReader(f, 0, capBytes)
		}
		if errors.Is(err, os.ErrNotExist) {
			if !*follow {
				c.errf("%s has no output yet\n", args[0])
				return nil
			}
		} else if err != nil {
			return err
		}
		for {
			if r != nil {
				if _, err := io.Copy(out, r); err != nil {
					return err
				}
			}
			if !*follow {
				break
			}
			j, err := s.Get(args[0])
			if err != nil {
				return err
			}
			if j.Status.Terminal() {
				if r != nil {
					io.Copy(out, r) // what was written before the end
				}
				break
			}
			select {
			case <-c.ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			if f == nil {
				if f, _ = statefile.Open(s.LogPath(args[0]), os.O_RDONLY, 0); f != nil {
					r = pipeline.NewLogReader(f, 0, capBytes)
				}
			}
		}
		if f != nil {
			f.Close()
		}
		return nil
	}
}

func setupRetry(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if err := needArgs("retry", args, 1, 1, "one job id"); err != nil {
			return err
		}
		if c.remoteMode() {
			return c.remoteRetry(args[0])
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		j, created, err := env.Retry(args[0])
		if err != nil {
			return jobLookupError(err)
		}
		if !created {
			c.errf("attempt %d already exists (%s); nothing created\n", j.Attempt, j.Status)
		}
		fmt.Fprintln(c.stdout, j.ID)
		return nil
	}
}

func setupGate(fs *flag.FlagSet, c *cli) func([]string) error {
	stageName := fs.String("stage", "", "stage whose gates to evaluate")
	branch := fs.String("branch", "", "branch to evaluate")
	target := fs.String("target", "", "target branch (default: target of orch.toml)")
	asJSON := fs.Bool("json", false, "print JSON")
	return func(args []string) error {
		env, err := c.env()
		if err != nil {
			return err
		}
		in := pipeline.GateInput{}
		var j *gitstate.Job
		switch {
		case len(args) == 1 && *stageName == "" && *branch == "":
			if j, err = env.Store.Get(args[0]); err != nil {
				return jobLookupError(err)
			}
			*stageName, *branch, *target = j.Stage, j.Branch, j.Target
		case len(args) == 0 && *stageName != "" && *branch != "":
			if err := gitstate.ValidateBranch(*branch); err != nil {
				return err
			}
			if *target == "" {
				*target = env.Config.Target
			}
		default:
			return usageErrorf("gate: give a job id, or --stage and --branch; run orch-hooks gate --help")
		}
		stage, ok := env.Config.Stage(*stageName)
		if !ok {
			return fmt.Errorf("%w %q: stages are %s", pipeline.ErrUnknownStage, *stageName, strings.Join(env.Config.StageNames(), ", "))
		}
		in.Stage, in.Branch, in.Target = stage, *branch, *target
		if j == nil {
			j = &gitstate.Job{Task: *branch, Stage: stage.Name, Branch: *branch, Target: *target, Attempt: 1}
		}
		in.Worktree, err = env.FindWorktree(c.ctx, j)
		if err != nil {
			return err
		}
		if in.Worktree == "" {
			in.Worktree = env.Repo.Worktree
		}
		in.Env = env.JobVars(j, in.Worktree)
		results := env.EvaluateGates(c.ctx, in)
		failed := pipeline.FirstFailed(results) != nil
		if *asJSON {
			if results == nil {
				results = []gitstate.GateResult{}
			}
			err = writeJSON(c.stdout, map[string]any{
				"stage": stage.Name, "branch": in.Branch, "target": in.Target, "worktree": in.Worktree,
				"passed": !failed, "gates": results,
			})
		} else {
			fmt.Fprintf(c.stdout, "gates of stage %s for %s → %s:\n", termtext.Line(stage.Name), termtext.Line(in.Branch), termtext.Line(in.Target))
			if len(results) == 0 {
				fmt.Fprintln(c.stdout, "  (the stage has no gates)")
			}
			tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
			for _, r := range results {
				mark := "pass"
				if !r.Passed {
					mark = "FAIL"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark, termtext.Line(r.Name), oneLine(r.Detail))
			}
			tw.Flush()
		}
		if err != nil {
			return err
		}
		if failed {
			return withCode(exitNo, fmt.Errorf("gate failed: %s", pipeline.FirstFailed(results).Name))
		}
		return nil
	}
}

// sharedPassLines says what a shared pass ended, one line per job, for
// dispatch and reap (stderr) and watch (its event lines): the jobs it
// expired (only those whose flip landed) and the local ends it settled
// late.
func sharedPassLines(rep pipeline.SharedReport, remote string) []string {
	var lines []string
	for _, x := range rep.Expired {
		if x.Won {
			lines = append(lines, fmt.Sprintf("%s: expired here: no beat from %s, its record unchanged for %s as seen here", termtext.Line(x.ID), termtext.Line(x.Host), x.Unchanged.Round(time.Second)))
		}
	}
	for _, id := range rep.Settled {
		lines = append(lines, fmt.Sprintf("%s: settled on %s (its end here had not reached the remote)", termtext.Line(id), remote))
	}
	return lines
}
