//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	orchhooks "github.com/orch-hooks/orch-hooks"
	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands,
		&command{name: "init", args: "", summary: "create the state dir; write orch.toml from the example if missing",
			help: `Creates <common-git-dir>/orch/ (shared by every worktree of the repository)
and, when the main worktree has no orch.toml, writes the documented example
there, with target set to this repository's branch: the default branch of
its remote (refs/remotes/<remote>/HEAD, of the only remote or origin), else
the current branch of the main worktree, else main; it says which. Running it again changes
nothing.`,
			setup: setupInit},
		&command{name: "enqueue", args: "--branch B [--stage S] [--task T] [--attempt N] [--target T]", summary: "queue a job; print its id (idempotent)",
			help: `The job id is derived from (task, stage, attempt): enqueuing the same job
again prints the same id and creates nothing. The task defaults to the
branch name, the stage to the first [[stages]] entry of orch.toml, the
attempt to 1. Only the id goes to stdout. In remote mode ([remote] name in
orch.toml) the job is created on that remote's shared queue, for any
machine's dispatch or watch to claim ("queued JOB on REMOTE" on stderr).`,
			setup: setupEnqueue},
		&command{name: "status", args: "[--json] [--all]", summary: "active and recently ended jobs, unreadable records",
			help: `In remote mode ([remote] name in orch.toml) it fetches the shared queue
once and lists its jobs with the host that claimed each, the runner's last
progress and beats and, for a running job, how long this machine has seen
its record unchanged; then the shared leases and this machine's local jobs
the remote does not have. An unreachable remote is exit 1.`,
			setup: setupStatus},
		&command{name: "show", args: "JOB [--json]", summary: "one job record",
			help: `In remote mode, the shared record of the job, and this machine's record
of it when it ran here.`,
			setup: setupShow},
		&command{name: "cancel", args: "JOB", summary: "cancel a queued or running job",
			help: `Stops the job's processes when it runs. In remote mode the job is
cancelled on the shared queue; a job running on this machine is stopped
here, one running on another machine stops at its runner's next beat.`,
			setup: setupCancel},
		&command{name: "version", args: "", summary: "print the version", setup: setupVersion},
	)
}

func setupInit(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if err := needArgs("init", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		r, err := c.openRepo()
		if err != nil {
			return err
		}
		if err := gitstate.Init(r.StateDir()); err != nil {
			return err
		}
		c.errf("state dir: %s\n", r.StateDir())
		path, _ := config.Find(c.configFlag, r.MainWorktree, r.Worktree)
		if _, err := os.Stat(path); err == nil {
			c.errf("config: %s (kept)\n", path)
		} else {
			target, why := initTarget(c, r)
			line, err := toml.Marshal(map[string]string{"target": target})
			if err != nil {
				return fmt.Errorf("write %s: target %q: %w", path, target, err)
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if errors.Is(err, os.ErrExist) {
				c.errf("config: %s (kept)\n", path)
			} else if err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			} else {
				_, werr := f.WriteString(orchhooks.ExampleConfigFor(string(line)))
				if cerr := f.Close(); werr == nil {
					werr = cerr
				}
				if werr != nil {
					os.Remove(path)
					return fmt.Errorf("write %s: %w", path, werr)
				}
				c.errf("config: %s (written from the example; edit its [[stages]])\n", path)
				c.errf("target: %s (%s; edit target in orch.toml to merge elsewhere)\n", termtext.Line(target), why)
			}
		}
		// Validate what is there now, so a broken orch.toml shows at once.
		_, err = c.loadConfig()
		return err
	}
}

// initTarget is the branch init writes as target, and why: the default
// branch of the repository's remote (the only remote, else origin) as
// its local refs/remotes/<remote>/HEAD names it (no network), else the
// current branch of the main worktree (of a bare repository: its HEAD),
// else main.
func initTarget(c *cli, r *gitstate.Repo) (branch, why string) {
	dir := r.Worktree
	if dir == "" {
		dir = r.CommonDir
	}
	remote := ""
	if out, err := gitstate.Git(c.ctx, dir, "remote"); err == nil && out != "" {
		remotes := strings.Split(out, "\n")
		if len(remotes) == 1 {
			remote = remotes[0]
		} else {
			for _, name := range remotes {
				if name == "origin" {
					remote = name
				}
			}
		}
	}
	if remote != "" {
		prefix := "refs/remotes/" + remote + "/"
		if ref, err := gitstate.Git(c.ctx, dir, "symbolic-ref", "-q", prefix+"HEAD"); err == nil && strings.HasPrefix(ref, prefix) {
			if b := strings.TrimPrefix(ref, prefix); gitstate.ValidateBranch(b) == nil {
				return b, fmt.Sprintf("the default branch of remote %s, %sHEAD", remote, prefix)
			}
		}
	}
	// The main worktree's HEAD (the common dir's), not a linked worktree's:
	// init run in a task's worktree must not make the task its target.
	if ref, err := gitstate.Git(c.ctx, dir, "--git-dir="+r.CommonDir, "symbolic-ref", "-q", "HEAD"); err == nil && strings.HasPrefix(ref, "refs/heads/") {
		if b := strings.TrimPrefix(ref, "refs/heads/"); gitstate.ValidateBranch(b) == nil {
			why := "the current branch"
			if r.Worktree != r.MainWorktree {
				why += " of the main worktree"
			}
			if remote != "" {
				why += fmt.Sprintf("; remote %s names no default branch (git remote set-head %s --auto sets one)", remote, remote)
			}
			return b, why
		}
	}
	return "main", "the default: no remote names a default branch and HEAD is not on a branch"
}

func setupEnqueue(fs *flag.FlagSet, c *cli) func([]string) error {
	var r pipeline.Request
	fs.StringVar(&r.Branch, "branch", "", "the job's branch (required)")
	fs.StringVar(&r.Stage, "stage", "", "stage to run (default: the first stage of orch.toml)")
	fs.StringVar(&r.Task, "task", "", "task name (default: the branch name)")
	fs.StringVar(&r.Target, "target", "", "branch to merge into (default: target of orch.toml)")
	fs.IntVar(&r.Attempt, "attempt", 1, "attempt number, from 1")
	return func(args []string) error {
		if err := needArgs("enqueue", args, 0, 0, "no positional arguments"); err != nil {
			return err
		}
		if r.Branch == "" {
			return usageErrorf("enqueue: --branch is required; e.g. orch-hooks enqueue --branch feat/login")
		}
		if r.Attempt < 1 {
			return usageErrorf("enqueue: --attempt %d: attempts count from 1", r.Attempt)
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		// A branch that does not exist is made from the target when the
		// job runs: for origin/x that would be a new branch beside the
		// remote one the user meant.
		if hint := env.Repo.RemoteTrackingHint(r.Branch); hint != "" {
			return usageErrorf("enqueue: %s", hint)
		}
		if env.Shared != nil {
			return c.remoteEnqueue(env, r)
		}
		j, created, err := env.Enqueue(r)
		if err != nil {
			return err
		}
		if !created {
			hint := env.NewAttemptHint(j)
			if hint != "" {
				hint = "; " + hint
			}
			c.errf("job %s already exists (%s); nothing created%s\n", j.ID, j.Status, hint)
		}
		fmt.Fprintln(c.stdout, j.ID)
		return nil
	}
}

// worktreesDiskMaxAge is how long status shows a measured figure of the
// disk task worktrees hold before it walks them again.
const worktreesDiskMaxAge = 2 * time.Minute

// recentEnded is how many ended jobs status shows without --all.
const recentEnded = 10

func setupStatus(fs *flag.FlagSet, c *cli) func([]string) error {
	asJSON := fs.Bool("json", false, "print JSON (stable keys; see README)")
	all := fs.Bool("all", false, "list every job, not only active and recently ended ones")
	return func(args []string) error {
		if err := needArgs("status", args, 0, 0, "no positional arguments"); err != nil {
			return err
		}
		if c.remoteMode() {
			return c.remoteStatus(*asJSON, *all)
		}
		s, err := c.openStore()
		if err != nil {
			return err
		}
		// Status needs no configuration, but shows its warnings, and a
		// broken file first: everything else is still listed (a user
		// debugging needs it most then), and status exits 2 after.
		cfg, cfgErr := c.loadConfig()
		var l gitstate.Listing
		if *all {
			l, err = s.All()
		} else {
			l, err = s.Active()
			if err == nil {
				var recent gitstate.Listing
				recent, err = s.Recent(recentEnded)
				l.Jobs = append(l.Jobs, recent.Jobs...)
				l.Unreadable = append(l.Unreadable, recent.Unreadable...)
			}
		}
		if err != nil {
			return err
		}
		orderJobs(l.Jobs)
		// The disk task worktrees hold (they are full checkouts), known
		// where the configuration says where they are.
		var disk pipeline.DiskUsage
		var wtErr error
		var wtDir string
		if cfgErr == nil {
			var lastEnd time.Time
			for _, j := range l.Jobs {
				if j.EndedAt.After(lastEnd) {
					lastEnd = j.EndedAt
				}
			}
			env := &pipeline.Env{Repo: c.repo, Store: s, Config: cfg}
			wtDir = env.WorktreesDir()
			disk, wtErr = env.WorktreesDiskCached(worktreesDiskMaxAge, lastEnd)
		}
		leases, badLeases, err := lease.Open(s.Dir()).List()
		if err != nil {
			return err
		}
		for _, u := range badLeases {
			l.Unreadable = append(l.Unreadable, u)
		}
		var last *reaper.Snapshot
		rs, rerr := reaper.LoadState(s.Dir())
		if rerr == nil {
			last = rs.LastPass
		}
		explained, explainErr := c.explainRunning(s, l.Jobs)
		if *asJSON {
			jobs := []jobJSON{}
			for _, j := range l.Jobs {
				jobs = append(jobs, withExplanation(toJobJSON(j), explained))
			}
			unreadable := toUnreadableJSON(l.Unreadable)
			if rerr != nil {
				unreadable = append(unreadable, unreadableJSON{Path: filepath.Join(s.Dir(), "reaper.toml"), Error: rerr.Error()})
			}
			now := time.Now()
			leasesJSON := []leaseJSON{}
			for _, l := range leases {
				leasesJSON = append(leasesJSON, toLeaseJSON(l, now))
			}
			out := map[string]any{
				"jobs":            jobs,
				"leases":          leasesJSON,
				"reaper":          last,
				"unreadable":      unreadable,
				"config_error":    toConfigErrorJSON(cfgErr),
				"worktrees_bytes": nil,
			}
			if cfgErr == nil && wtErr == nil {
				out["worktrees_bytes"] = disk.Bytes
			}
			if err := writeJSON(c.stdout, out); err != nil {
				return err
			}
			return withCode(exitUsage, cfgErr)
		}
		if cfgErr != nil {
			fmt.Fprintf(c.stdout, "config error: %s\n  hooks make no reaper pass and a running watch keeps its last good config until it is fixed\n\n", termtext.Line(cfgErr.Error()))
		}
		c.printJobTable(l.Jobs)
		printExplanations(c.stdout, l.Jobs, explained, explainErr)
		if len(leases) > 0 {
			fmt.Fprintln(c.stdout)
			c.printLeaseTable(leases, time.Now())
		}
		for _, u := range l.Unreadable {
			fmt.Fprintf(c.stdout, "unreadable: %s: %s\n", termtext.Line(u.Path), termtext.Line(u.Err.Error()))
		}
		switch {
		case wtErr != nil:
			fmt.Fprintf(c.stdout, "task worktrees: %s\n", termtext.Line(wtErr.Error()))
		case disk.Worktrees > 0:
			fmt.Fprintf(c.stdout, "task worktrees: %d under %s hold %s, measured %s ago (orch-hooks gc removes those of long-ended tasks)\n",
				disk.Worktrees, termtext.Line(wtDir), humanBytes(disk.Bytes), age(time.Now(), disk.MeasuredAt))
		}
		switch {
		case rerr != nil:
			fmt.Fprintf(c.stdout, "unreadable: %s\n", termtext.Line(rerr.Error()))
		case last != nil:
			// passSummary starts with "pass: " for reap's own line; here
			// the line already says what it is.
			fmt.Fprintf(c.stdout, "last reaper pass %s ago: %s\n", age(time.Now(), last.At), strings.TrimPrefix(passSummary(last), "pass: "))
			for _, e := range last.Errors {
				fmt.Fprintf(c.stdout, "  error: %s\n", passErrorString(e))
			}
		}
		if cfgErr != nil {
			return withCode(exitUsage, errors.New("status: the configuration has an error (the first line above); fix it"))
		}
		return nil
	}
}

// orderJobs puts jobs in the order the watch view shows them: running,
// then queued, then ended, most recently ended first. Within running and
// queued the listing's order stays.
func orderJobs(jobs []*gitstate.Job) {
	rank := func(j *gitstate.Job) int {
		switch j.Status {
		case gitstate.Running:
			return 0
		case gitstate.Queued:
			return 1
		}
		return 2
	}
	sort.SliceStable(jobs, func(a, b int) bool {
		ra, rb := rank(jobs[a]), rank(jobs[b])
		if ra != rb {
			return ra < rb
		}
		return ra == 2 && jobs[a].EndedAt.After(jobs[b].EndedAt)
	})
}

func (c *cli) printJobTable(jobs []*gitstate.Job) {
	if len(jobs) == 0 {
		fmt.Fprintln(c.stdout, "no jobs")
		return
	}
	now := time.Now()
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATUS\tSTAGE\tBRANCH\tAGE\tPID\tREASON")
	for _, j := range jobs {
		since := j.CreatedAt
		switch {
		case j.Status.Terminal():
			since = j.EndedAt
		case j.Status == gitstate.Running:
			since = j.StartedAt
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", termtext.Line(j.ID), termtext.Line(string(j.Status)), termtext.Line(j.Stage), termtext.Line(j.Branch),
			age(now, since), pidString(j.Command.PID), dash(oneLine(j.Reason)))
	}
	tw.Flush()
}

// oneLine is s for a table cell: control characters escaped, newlines
// included (termtext.Line), cut to 60 characters (never inside one).
func oneLine(s string) string {
	s = termtext.Line(s)
	if utf8.RuneCountInString(s) > 60 {
		s = string([]rune(s)[:57]) + "..."
	}
	return s
}

func setupShow(fs *flag.FlagSet, c *cli) func([]string) error {
	asJSON := fs.Bool("json", false, "print JSON (stable keys; see README)")
	return func(args []string) error {
		if err := needArgs("show", args, 1, 1, "one job id"); err != nil {
			return err
		}
		if c.remoteMode() {
			return c.remoteShow(args[0], *asJSON)
		}
		s, err := c.openStore()
		if err != nil {
			return err
		}
		j, err := s.Get(args[0])
		if err != nil {
			return jobLookupError(err)
		}
		explained, explainErr := c.explainRunning(s, []*gitstate.Job{j})
		if *asJSON {
			return writeJSON(c.stdout, withExplanation(toJobJSON(j), explained))
		}
		c.printJob(s, j)
		if e, ok := explained[j.ID]; ok {
			printExplanation(c.stdout, e)
		} else if explainErr != nil {
			printExplanations(c.stdout, nil, nil, explainErr)
		}
		return nil
	}
}

// jobLookupError adds the way out to a failed lookup.
func jobLookupError(err error) error {
	if errors.Is(err, gitstate.ErrNotFound) {
		return fmt.Errorf("%w; run orch-hooks status --all for the job ids", err)
	}
	return err
}

func (c *cli) printJob(s *gitstate.Store, j *gitstate.Job) {
	w := tabwriter.NewWriter(c.stdout, 0, 4, 1, ' ', 0)
	// Every value on one line, control characters escaped: a reason can
	// hold a gate's whole output.
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s:\t%s\n", termtext.Line(k), termtext.Line(v))
		}
	}
	row("id", j.ID)
	row("status", string(j.Status))
	row("task", j.Task)
	row("stage", j.Stage)
	row("branch", j.Branch)
	row("target", j.Target)
	row("attempt", fmt.Sprint(j.Attempt))
	row("created", showTime(j.CreatedAt))
	row("started", showTime(j.StartedAt))
	row("finished", showTime(j.FinishedAt))
	row("ended", showTime(j.EndedAt))
	if !j.Monitor.IsZero() {
		row("monitor", j.Monitor.String())
	}
	if !j.Command.IsZero() {
		row("command", fmt.Sprintf("%s, process group %d", j.Command, j.PGID))
	}
	if j.ExitCode != nil {
		row("exit code", fmt.Sprint(*j.ExitCode))
	}
	for _, g := range j.Gates {
		res := "passed"
		if !g.Passed {
			res = "FAILED"
		}
		row("gate "+g.Name, strings.TrimSpace(res+" "+oneLine(g.Detail)))
	}
	if len(j.Gates) > 0 && j.Gates[0].Commit != "" {
		// Which commit the gates judged (one evaluation judges one pair):
		// a merge merges only such a commit.
		row("gates judged", fmt.Sprintf("%s against %s %s", j.Gates[0].Commit, j.Target, j.Gates[0].Target))
	}
	row("merging", j.Merging)
	row("previous stage passed", j.PrevCommit)
	row("reason", j.Reason)
	row("ended by", j.EndedBy)
	row("next job", j.NextJob)
	row("record", s.RecordPath(j.ID))
	if _, err := os.Stat(s.LogPath(j.ID)); err == nil {
		row("log", s.LogPath(j.ID))
	}
	w.Flush()
	if len(j.History) > 0 {
		fmt.Fprintln(c.stdout, "history:")
		for _, t := range j.History {
			from := string(t.From)
			if from == "" {
				from = "(new)"
			}
			fmt.Fprintf(c.stdout, "  %s  %s → %s  by %s (pid %d on %s)  %s\n",
				t.At.Local().Format(time.RFC3339), from, t.To, termtext.Line(t.Actor), t.PID, termtext.Line(t.Host), termtext.Line(t.Reason))
		}
	}
}

func setupCancel(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if err := needArgs("cancel", args, 1, 1, "one job id"); err != nil {
			return err
		}
		if c.remoteMode() {
			return c.remoteCancel(args[0])
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		return c.localCancel(env, args[0])
	}
}

// localCancel is cancel of a job of this machine's local state.
func (c *cli) localCancel(env *pipeline.Env, id string) error {
	j, won, err := env.Cancel(c.ctx, id)
	if err != nil {
		return jobLookupError(err)
	}
	if !won {
		return withCode(exitNo, fmt.Errorf("job %s is %s, not queued or running: nothing to cancel", j.ID, j.Status))
	}
	switch {
	case j.History[len(j.History)-1].From != gitstate.Running:
		c.errf("cancelled %s\n", j.ID)
	case j.Command.IsZero():
		c.errf("cancelled %s; its command had not started yet: the monitor stops it\n", j.ID)
	case !procid.Local(j.Command):
		// StopGroups signals only what it can identify on this
		// machine and boot: nothing was stopped here.
		c.errf("cancelled %s; its processes run on %s (another host or boot) and were not signalled from here: stop them there\n", j.ID, j.Command.Host)
	default:
		c.errf("cancelled %s; its processes were stopped\n", j.ID)
	}
	if j.Reason != "cancelled by user" {
		// Ended from a record that did not decode: the reason says
		// where its bytes were kept.
		c.errf("%s\n", j.Reason)
	}
	return nil
}

func setupVersion(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if err := needArgs("version", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "orch-hooks %s\n", version())
		return nil
	}
}

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if (v == "" || v == "(devel)") && rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		return "devel-" + rev + dirty
	}
	if v == "" {
		v = "(devel)"
	}
	return v + " " + filepath.Base(bi.GoVersion)
}

// showTime is a record's time as show prints it: local, RFC 3339; empty
// when unset (the row is then left out).
func showTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Local().Format(time.RFC3339)
}
