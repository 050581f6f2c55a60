//go:build linux || darwin || freebsd

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// explainRunning is what a reaper pass made now would see and do about
// each running job of jobs, by job id (reaper.Explain: the pass's own
// judging, nothing written). It needs the configuration: a file that does
// not load is the error, and no job is explained.
func (c *cli) explainRunning(s *gitstate.Store, jobs []*gitstate.Job) (map[string]reaper.Explanation, error) {
	running := false
	for _, j := range jobs {
		running = running || j.Status == gitstate.Running
	}
	if !running {
		return nil, nil
	}
	cfg, err := c.loadConfig()
	if err != nil {
		return nil, err
	}
	env, err := c.env()
	if err != nil {
		return nil, err
	}
	es, err := reaper.Explain(env, cfg.Reaper, jobs, reaper.Options{})
	m := map[string]reaper.Explanation{}
	for _, e := range es {
		m[e.Job] = e
	}
	return m, err
}

// printExplanations writes status's line per running job: what the reaper
// sees and does about it. err is explainRunning's.
func printExplanations(w io.Writer, jobs []*gitstate.Job, es map[string]reaper.Explanation, err error) {
	switch {
	case err != nil && len(es) == 0:
		fmt.Fprintf(w, "reaper: running jobs not explained: %s\n", termtext.Line(err.Error()))
	case err != nil:
		// The reaper's state unreadable: a pass starts afresh, and so do
		// these explanations.
		fmt.Fprintf(w, "reaper: %s; explained with its streaks restarted, as a pass would\n", termtext.Line(err.Error()))
	}
	for _, j := range jobs {
		if e, ok := es[j.ID]; ok {
			fmt.Fprintf(w, "reaper: %s: %s\n", termtext.Line(j.ID), e)
		}
	}
}

// printExplanation writes show's full account of what the reaper sees of
// a running job and does about it.
func printExplanation(w io.Writer, e reaper.Explanation) {
	fmt.Fprintln(w, "reaper (a pass made now):")
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s:\t%s\n", k, termtext.Line(v)) }
	proc := func(p reaper.Process) string {
		s := fmt.Sprintf("pid %d %s", p.PID, p.State)
		if p.Detail != "" {
			s += " (" + p.Detail + ")"
		}
		return s
	}
	secs := func(n int64) string { return (time.Duration(n) * time.Second).String() }
	row("monitor", proc(e.Monitor))
	if e.Command != nil {
		row("command", proc(*e.Command))
	} else {
		row("command", "not started")
	}
	if e.FinalizeStep != nil {
		row("finalize step", proc(*e.FinalizeStep))
	}
	if e.ExitCode != nil {
		row("exit code", fmt.Sprintf("%d recorded", *e.ExitCode))
	} else {
		row("exit code", "not recorded")
	}
	if e.DeadStreak != nil {
		row("dead streak", fmt.Sprintf("%d of %d observations, next observation counted in %s",
			e.DeadStreak.Count, e.DeadStreak.Of, secs(e.DeadStreak.NextObservationInS)))
	}
	if e.FinalizeGraceLeftS != nil {
		row("finalize grace", secs(*e.FinalizeGraceLeftS)+" left")
	}
	if e.MaxRunningLeftS != nil {
		row("max_running", "ends it in "+secs(*e.MaxRunningLeftS))
	}
	switch e.Action {
	case reaper.ActionReap:
		row("action", "end it ("+e.Tier+"): "+e.Why)
	case reaper.ActionObserve:
		row("action", "count a dead observation: "+e.Why)
	case reaper.ActionAdopt:
		row("action", "adopt: "+e.Why)
	default:
		row("action", "none: "+e.Why)
	}
	switch {
	case e.NextPassInS == nil:
		row("next pass", "no reaper pass has run yet (git hooks, watch and reap make them)")
	case *e.NextPassInS == 0:
		row("next pass", fmt.Sprintf("due now (last pass + interval: %s; git hooks, watch and reap make them)", e.NextPassAt.Local().Format(time.RFC3339)))
	default:
		row("next pass", fmt.Sprintf("due in %s (%s)", secs(*e.NextPassInS), e.NextPassAt.Local().Format(time.RFC3339)))
	}
	tw.Flush()
}

// runningSummary says what a pass saw of the running jobs and did about
// them, grouped: "1 running (monitor dead, command alive: left running)".
// Without a report per job (a pass not asked to explain), the count alone.
func runningSummary(s *reaper.Snapshot) string {
	if len(s.Running) == 0 {
		return fmt.Sprintf("%d running scanned", s.Scanned)
	}
	var order []string
	n := map[string]int{}
	for _, e := range s.Running {
		k := e.Seen + ": " + e.Outcome
		if n[k] == 0 {
			order = append(order, k)
		}
		n[k]++
	}
	parts := make([]string, len(order))
	for i, k := range order {
		parts[i] = k
		if n[k] > 1 || len(order) > 1 {
			parts[i] = fmt.Sprintf("%d× %s", n[k], k)
		}
	}
	return fmt.Sprintf("%d running (%s)", s.Scanned, strings.Join(parts, "; "))
}

// withExplanation is j with its explanation from es, if it has one.
func withExplanation(j jobJSON, es map[string]reaper.Explanation) jobJSON {
	if e, ok := es[j.ID]; ok {
		j.Reaper = &e
	}
	return j
}
