//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// The commands of the shared queue in remote mode (docs/DISTRIBUTED.md):
// each local command's flags, the shared records' answers. The logic is
// pipeline's (sharedqueue.go); this file prints it.

// remoteEnqueue creates r's job on the shared queue and prints its id, as
// local enqueue does, saying on stderr which remote holds it.
func (c *cli) remoteEnqueue(env *pipeline.Env, r pipeline.Request) error {
	j, created, err := env.EnqueueShared(c.ctx, r)
	if err != nil {
		return err
	}
	remote := env.Shared.Queue.Store.Remote()
	if created {
		c.errf("queued %s on %s\n", j.ID, remote)
	} else {
		hint := ""
		switch j.Status {
		case gitstate.Failed, gitstate.Cancelled:
			hint = fmt.Sprintf("; orch-hooks retry %s makes a new attempt", j.ID)
		case gitstate.Done:
			hint = fmt.Sprintf("; to run stage %s again, enqueue a later attempt (--attempt %d)", termtext.Line(j.Stage), j.Attempt+1)
		}
		c.errf("job %s already exists on %s (%s%s); nothing created%s\n", j.ID, remote, j.Status, onHost(j), hint)
	}
	fmt.Fprintln(c.stdout, j.ID)
	return nil
}

// onHost is " by HOST" for a job some machine claimed, "" for one none
// has.
func onHost(j *remotejob.Job) string {
	if j.Host == "" {
		return ""
	}
	return " by " + termtext.Line(j.Host)
}

// remoteRetry makes attempt+1 of a failed or cancelled shared job.
func (c *cli) remoteRetry(id string) error {
	env, err := c.env()
	if err != nil {
		return err
	}
	j, created, err := env.RetryShared(c.ctx, id)
	if err != nil {
		return err
	}
	remote := env.Shared.Queue.Store.Remote()
	if created {
		c.errf("queued %s (attempt %d) on %s\n", j.ID, j.Attempt, remote)
	} else {
		c.errf("attempt %d already exists on %s (%s%s); nothing created\n", j.Attempt, remote, j.Status, onHost(j))
	}
	fmt.Fprintln(c.stdout, j.ID)
	return nil
}

// remoteCancel cancels a shared job on the remote and, when it runs on
// this machine, here too.
func (c *cli) remoteCancel(id string) error {
	env, err := c.env()
	if err != nil {
		return err
	}
	res, err := env.CancelShared(c.ctx, id)
	remote := env.Shared.Queue.Store.Remote()
	if errors.Is(err, remotejob.ErrNotFound) {
		if _, lerr := env.Store.Get(id); lerr == nil {
			// A job of this machine's local state alone: cancelled as
			// local mode cancels it.
			c.errf("%s is not on %s: cancelling this machine's local job\n", id, remote)
			return c.localCancel(env, id)
		}
	}
	if err != nil && res.Job == nil {
		return err
	}
	j := res.Job
	if !res.Won {
		return withCode(exitNo, fmt.Errorf("job %s is %s on %s, not queued or running: nothing to cancel", j.ID, j.Status, remote))
	}
	me := env.Shared.Queue.Host
	switch {
	case err != nil:
		// Cancelled on the remote, but not (all) stopped here: the error
		// says what was not.
		c.errf("cancelled %s on %s\n", j.ID, remote)
	case res.Local != nil && !res.Local.Command.IsZero() && procid.Local(res.Local.Command):
		c.errf("cancelled %s on %s; it ran here: its processes were stopped\n", j.ID, remote)
	case res.Local != nil:
		c.errf("cancelled %s on %s; it was %s here and will not run\n", j.ID, remote, res.Local.History[len(res.Local.History)-1].From)
	case j.Host != "" && j.Host != me:
		c.errf("cancelled %s on %s; it runs on %s: its runner stops it at its next beat (within %s)\n",
			j.ID, remote, termtext.Line(j.Host), env.Shared.Heartbeat)
	default:
		c.errf("cancelled %s on %s\n", j.ID, remote)
	}
	return err
}

// remoteLogsElsewhere is logs for a job this machine has no record of: the
// output of a shared job stays on the machine that ran it.
func (c *cli) remoteLogsElsewhere(id string, local error) error {
	env, err := c.env()
	if err != nil {
		return err
	}
	sj, err := env.SharedJobOf(c.ctx, id)
	if errors.Is(err, remotejob.ErrNotFound) {
		return jobLookupError(local)
	}
	if err != nil {
		return err
	}
	j, remote := sj.Job, env.Shared.Queue.Store.Remote()
	if j.Host == "" {
		c.errf("%s has no output yet: it is %s on %s and no machine has run it\n", id, j.Status, remote)
		return nil
	}
	return fmt.Errorf("%s ran on %s, not on this machine (%s): a job's output stays on the machine that ran it; run orch-hooks logs %s there",
		id, termtext.Line(j.Host), termtext.Line(env.Shared.Queue.Host), id)
}

// sharedJobJSON is the --json shape of a shared job: the record's fields,
// with where this machine stands.
type sharedJobJSON struct {
	ID        string                `json:"id"`
	Task      string                `json:"task"`
	Stage     string                `json:"stage"`
	Branch    string                `json:"branch"`
	Target    string                `json:"target"`
	Attempt   int                   `json:"attempt"`
	Status    gitstate.Status       `json:"status"`
	Host      string                `json:"host"`
	Run       string                `json:"run"`
	Progress  string                `json:"progress"`
	Beats     int                   `json:"beats"`
	BeatAt    *string               `json:"beat_at"`
	CreatedAt *string               `json:"created_at"`
	StartedAt *string               `json:"started_at"`
	EndedAt   *string               `json:"ended_at"`
	ExitCode  *int                  `json:"exit_code"`
	Reason    string                `json:"reason"`
	EndedBy   string                `json:"ended_by"`
	NextJob   string                `json:"next_job"`
	Gates     []gitstate.GateResult `json:"gates"`
	// VersionID is the record's version (a commit id on the remote).
	VersionID string `json:"version_id"`
	// UnchangedS: a running job's current version has been seen
	// unchanged by this machine for this long; null when not observed.
	UnchangedS *float64 `json:"unchanged_s"`
	// Here: this machine has a local record of the job (it ran or runs here).
	Here bool `json:"here"`
}

func toSharedJobJSON(sj pipeline.SharedJob) sharedJobJSON {
	j := sj.Job
	gates := j.Gates
	if gates == nil {
		gates = []gitstate.GateResult{}
	}
	out := sharedJobJSON{
		ID: j.ID, Task: j.Task, Stage: j.Stage, Branch: j.Branch, Target: j.Target, Attempt: j.Attempt,
		Status: j.Status, Host: j.Host, Run: j.Run, Progress: j.Progress, Beats: j.Beats, BeatAt: rfc3339(j.BeatAt),
		CreatedAt: rfc3339(j.CreatedAt), StartedAt: rfc3339(j.StartedAt), EndedAt: rfc3339(j.EndedAt),
		ExitCode: j.ExitCode, Reason: j.Reason, EndedBy: j.EndedBy, NextJob: j.Next, Gates: gates,
		VersionID: sj.VersionID, Here: sj.Local != nil,
	}
	if sj.Seen {
		s := sj.Unchanged.Seconds()
		out.UnchangedS = &s
	}
	return out
}

type sharedLeaseJSON struct {
	Target     string  `json:"target"`
	Held       bool    `json:"held"`
	Holder     string  `json:"holder"`
	Host       string  `json:"host"`
	Token      uint64  `json:"token"`
	AcquiredAt *string `json:"acquired_at"`
	RenewedAt  *string `json:"renewed_at"`
	TTLS       float64 `json:"ttl_s"`
}

func toSharedLeaseJSON(l *remotelease.Lease) sharedLeaseJSON {
	return sharedLeaseJSON{Target: l.Target, Held: l.Held, Holder: l.Holder, Host: l.Owner.Host, Token: l.Token,
		AcquiredAt: rfc3339(l.AcquiredAt), RenewedAt: rfc3339(l.RenewedAt), TTLS: l.TTL().Seconds()}
}

// remoteStatus prints the shared queue after one Sync.
func (c *cli) remoteStatus(asJSON, all bool) error {
	env, err := c.env()
	if err != nil {
		return err
	}
	st, err := env.SharedStatusOf(c.ctx, recentEnded, all)
	if err != nil {
		return err
	}
	if asJSON {
		jobs := []sharedJobJSON{}
		for _, sj := range st.Jobs {
			jobs = append(jobs, toSharedJobJSON(sj))
		}
		leases := []sharedLeaseJSON{}
		for _, l := range st.Leases {
			leases = append(leases, toSharedLeaseJSON(l))
		}
		local := []jobJSON{}
		for _, j := range st.LocalOnly {
			local = append(local, toJobJSON(j))
		}
		return writeJSON(c.stdout, map[string]any{
			"remote":       st.Remote,
			"host":         st.Host,
			"first_use":    st.FirstUse,
			"jobs":         jobs,
			"leases":       leases,
			"local_only":   local,
			"unreadable":   toUnreadableJSON(st.Unreadable),
			"config_error": nil,
		})
	}
	now := time.Now()
	fmt.Fprintf(c.stdout, "shared queue on %s (this machine: %s)\n", termtext.Line(st.Remote), termtext.Line(st.Host))
	switch {
	case st.FirstUse:
		fmt.Fprintf(c.stdout, "no shared records on %s yet: remote mode's first use; orch-hooks enqueue creates the first job there\n", termtext.Line(st.Remote))
	case len(st.Jobs) == 0:
		fmt.Fprintln(c.stdout, "no jobs")
	default:
		c.printSharedTable(st.Jobs, now)
	}
	if len(st.Leases) > 0 {
		fmt.Fprintf(c.stdout, "\nshared leases on %s:\n", termtext.Line(st.Remote))
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TARGET\tSTATE\tHOLDER\tHOST\tTOKEN\tAGE")
		for _, l := range st.Leases {
			state, holder, host, since := "free", "-", "-", l.RenewedAt
			if l.Held {
				state, holder, host, since = "held", termtext.Line(l.Holder), termtext.Line(l.Owner.Host), l.AcquiredAt
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", termtext.Line(l.Target), state, holder, dash(host), l.Token, age(now, since))
		}
		tw.Flush()
	}
	if len(st.LocalOnly) > 0 {
		fmt.Fprintf(c.stdout, "\nthis machine's local jobs (not on %s: made before remote mode):\n", termtext.Line(st.Remote))
		c.printJobTable(st.LocalOnly)
	}
	for _, u := range st.Unreadable {
		fmt.Fprintf(c.stdout, "unreadable: %s: %s\n", termtext.Line(u.Path), termtext.Line(u.Err.Error()))
	}
	return nil
}

// printSharedTable is the shared jobs' table: where each runs, what its
// runner last said, and, for a running job, how long this machine has seen
// its record unchanged (what expiry judges, on this machine's clock).
func (c *cli) printSharedTable(jobs []pipeline.SharedJob, now time.Time) {
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATUS\tHOST\tSTAGE\tBRANCH\tAGE\tPROGRESS\tBEATS\tREASON")
	for _, sj := range jobs {
		j := sj.Job
		since := j.CreatedAt
		switch {
		case j.Status.Terminal():
			since = j.EndedAt
		case j.Status == gitstate.Running:
			since = j.StartedAt
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", termtext.Line(j.ID), j.Status, dash(termtext.Line(j.Host)),
			termtext.Line(j.Stage), termtext.Line(j.Branch), age(now, since), dash(oneLine(j.Progress)), beats(sj), dash(oneLine(j.Reason)))
	}
	tw.Flush()
}

// beats is a running job's beat count with how long this machine has seen
// its record unchanged.
func beats(sj pipeline.SharedJob) string {
	b := fmt.Sprint(sj.Job.Beats)
	if sj.Job.Status != gitstate.Running {
		return b
	}
	if !sj.Seen {
		return b + " (not observed here yet)"
	}
	return fmt.Sprintf("%s (unchanged for %ds as seen here)", b, int(sj.Unchanged.Seconds()))
}

// remoteShow prints the shared record of a job and, when it ran here, the
// local record too.
func (c *cli) remoteShow(id string, asJSON bool) error {
	env, err := c.env()
	if err != nil {
		return err
	}
	sj, err := env.SharedJobOf(c.ctx, id)
	if errors.Is(err, remotejob.ErrNotFound) {
		// A job of this machine's local state alone (made before remote
		// mode), as status lists it.
		if lj, lerr := env.Store.Get(id); lerr == nil {
			if asJSON {
				return writeJSON(c.stdout, map[string]any{"shared": nil, "remote": env.Shared.Queue.Store.Remote(), "local": toJobJSON(lj)})
			}
			fmt.Fprintf(c.stdout, "not on %s: a job of this machine's local state (made before remote mode)\n", env.Shared.Queue.Store.Remote())
			c.printJob(env.Store, lj)
			return nil
		}
	}
	if err != nil {
		return err
	}
	if asJSON {
		out := map[string]any{"shared": toSharedJobJSON(sj), "remote": env.Shared.Queue.Store.Remote(), "local": nil}
		if sj.Local != nil {
			out["local"] = toJobJSON(sj.Local)
		}
		return writeJSON(c.stdout, out)
	}
	j := sj.Job
	w := tabwriter.NewWriter(c.stdout, 0, 4, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s:\t%s\n", k, termtext.Line(v))
		}
	}
	row("id", j.ID)
	row("status", string(j.Status))
	row("host", j.Host)
	row("run", j.Run)
	row("task", j.Task)
	row("stage", j.Stage)
	row("branch", j.Branch)
	row("target", j.Target)
	row("attempt", fmt.Sprint(j.Attempt))
	row("created", showTime(j.CreatedAt))
	row("started", showTime(j.StartedAt))
	row("ended", showTime(j.EndedAt))
	row("progress", j.Progress)
	if j.Beats > 0 || j.Status == gitstate.Running {
		row("beats", fmt.Sprintf("%s, the last at %s by %s's clock", beats(sj), showTime(j.BeatAt), dash(j.Host)))
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
	row("previous stage passed", j.PrevCommit)
	row("reason", j.Reason)
	row("ended by", j.EndedBy)
	row("next job", j.Next)
	row("record", fmt.Sprintf("%s refs/orch/%s (version %s)", env.Shared.Queue.Store.Remote(), sj.Name, sj.VersionID))
	w.Flush()
	if sj.Local != nil {
		fmt.Fprintf(c.stdout, "\non this machine (%s):\n", termtext.Line(env.Shared.Queue.Host))
		c.printJob(env.Store, sj.Local)
	}
	return nil
}
