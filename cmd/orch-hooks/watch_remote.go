//go:build linux || darwin || freebsd

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// watch in remote mode: every interval, one pass over the shared queue
// (pipeline.Env.SharedPass: sync, expire, settle repair, claims up to
// max_concurrency) before the local reaper pass and dispatch, which start
// what was claimed. The piped lines say what the pass did and what other
// machines did between two passes, as this machine saw it in the records.

// sharedSeen is a shared job as the last pass saw it.
type sharedSeen struct {
	status  gitstate.Status
	host    string
	endedBy string
	reason  string
}

// sharedTick is remote mode's part of a tick.
func (w *watcher) sharedTick(ctx context.Context) {
	capacity := 0
	if w.dispatch && w.cfg.Err() == nil {
		capacity = w.env.Config.MaxConcurrency
	}
	rep, err := w.env.SharedPass(ctx, capacity)
	if ctx.Err() != nil {
		return
	}
	w.sharedErr = ""
	if err != nil {
		w.sharedErr = err.Error()
	}
	if !w.tty {
		for _, line := range sharedPassLines(rep, w.env.Shared.Queue.Store.Remote()) {
			w.say("shared: %s", line)
		}
		for _, e := range rep.Errors {
			w.say("shared error: %s", termtext.Line(e.Error()))
		}
		if err != nil {
			w.say("shared: %s", termtext.Line(err.Error()))
		}
	}
	if err == nil {
		w.sharedChanges(ctx)
	}
}

// sharedChanges compares the shared queue the pass just fetched with the
// one before, records each change in this machine's event log (a job
// queued, claimed by a host, ended and by whom) and, piped, says it. The
// first pass only says how many jobs there are.
func (w *watcher) sharedChanges(ctx context.Context) {
	entries, err := w.env.Shared.Queue.List(ctx)
	if err != nil {
		return // said by the next pass
	}
	now := make(map[string]sharedSeen, len(entries))
	var ids []string
	for _, e := range entries {
		if e.Err != nil || e.Job == nil {
			continue
		}
		j := e.Job
		now[j.ID] = sharedSeen{status: j.Status, host: j.Host, endedBy: j.EndedBy, reason: j.Reason}
		ids = append(ids, j.ID)
	}
	first := w.shared == nil
	old := w.shared
	w.shared = now
	remote := w.env.Shared.Queue.Store.Remote()
	if first {
		if w.tty {
			return
		}
		count := map[gitstate.Status]int{}
		for _, s := range now {
			count[s.status]++
		}
		w.say("shared: the queue on %s, as %s: %d queued, %d running", remote, termtext.Line(w.env.Shared.Queue.Host), count[gitstate.Queued], count[gitstate.Running])
		return
	}
	for _, id := range ids {
		n, o, had := now[id], old[id], false
		if _, had = old[id]; had && n == o {
			continue
		}
		sid := termtext.Line(id)
		switch {
		case n.status == gitstate.Queued:
			w.sharedEvent(id, o.status, n, "queued on "+remote, "shared: %s queued on %s", sid, remote)
		case n.status == gitstate.Running && (!had || o.status != gitstate.Running || o.host != n.host):
			w.sharedEvent(id, o.status, n, "claimed by "+n.host+" on "+remote, "shared: %s claimed by %s", sid, termtext.Line(n.host))
		case n.status.Terminal() && (!had || !o.status.Terminal()):
			why := fmt.Sprintf("%s on %s, ended by %s", n.status, remote, dash(n.endedBy))
			line := fmt.Sprintf("shared: %s %s, ended by %s", sid, n.status, dash(termtext.Line(n.endedBy)))
			if n.host != "" {
				why += fmt.Sprintf(" (it ran on %s)", n.host)
				line += fmt.Sprintf(" (it ran on %s)", termtext.Line(n.host))
			}
			if n.reason != "" {
				why += ": " + n.reason
				line += ": " + oneLine(n.reason)
			}
			w.sharedEvent(id, o.status, n, why, "%s", line)
		}
	}
}

// sharedEvent records in this machine's event log a transition of shared
// job id that this watch saw on the remote (actor "remote", apart from
// this machine's own actions, actor "shared@HOST"), and says it when
// piped.
func (w *watcher) sharedEvent(id string, from gitstate.Status, n sharedSeen, reason, format string, args ...any) {
	w.env.Store.Note(gitstate.Transition{Job: id, Actor: "remote", From: from, To: n.status, Reason: "seen: " + reason})
	if !w.tty {
		w.say(format, args...)
	}
}

// sharedFrame is the shared queue as the live view shows it: from the
// mirror the last pass fetched (no fetch per redraw).
func (w *watcher) sharedFrame() *sharedView {
	sv := &sharedView{Remote: w.env.Shared.Queue.Store.Remote(), Host: w.env.Shared.Queue.Host, Err: w.sharedErr}
	st, err := w.env.SharedMirror(w.c.ctx, 5, false)
	if err != nil {
		if sv.Err == "" {
			sv.Err = err.Error()
		}
		return sv
	}
	sv.Jobs, sv.Leases, sv.Unreadable = st.Jobs, st.Leases, len(st.Unreadable)
	return sv
}

// sharedView is the shared part of a frame (remote mode).
type sharedView struct {
	Remote, Host string
	Jobs         []pipeline.SharedJob
	Leases       []*remotelease.Lease
	Unreadable   int
	Err          string // the last pass's failure (the remote unreachable)
}

// renderShared lays out the shared queue's section of the live view:
// active jobs and the few most recently ended, with host, progress and
// beats, then the shared leases.
func renderShared(sv *sharedView, now time.Time, st styles) []string {
	lines := []string{"", st.bold + fmt.Sprintf("SHARED QUEUE on %s (this machine: %s)", termtext.Line(sv.Remote), termtext.Line(sv.Host)) + st.reset}
	if sv.Err != "" {
		lines = append(lines, st.red+"  "+oneLine(sv.Err)+st.reset)
	}
	if len(sv.Jobs) > 0 {
		rows := [][]string{{"JOB", "STATUS", "HOST", "STAGE", "BRANCH", "AGE", "PROGRESS", "BEATS"}}
		for _, sj := range sv.Jobs {
			j := sj.Job
			since := j.CreatedAt
			switch {
			case j.Status.Terminal():
				since = j.EndedAt
			case j.Status == gitstate.Running:
				since = j.StartedAt
			}
			rows = append(rows, []string{termtext.Line(j.ID), string(j.Status), dash(termtext.Line(j.Host)), termtext.Line(j.Stage),
				termtext.Line(j.Branch), age(now, since), dash(oneLine(j.Progress)), beats(sj)})
		}
		for i, r := range table(rows) {
			if i == 0 {
				r = st.dim + r + st.reset
			}
			lines = append(lines, "  "+r)
		}
	} else {
		lines = append(lines, "  no shared jobs")
	}
	for _, l := range sv.Leases {
		if l.Held {
			lines = append(lines, fmt.Sprintf("  lease %s: held by %s on %s, token %d", termtext.Line(l.Target), termtext.Line(l.Holder), dash(termtext.Line(l.Owner.Host)), l.Token))
		}
	}
	if sv.Unreadable > 0 {
		lines = append(lines, st.red+fmt.Sprintf("  %d unreadable shared record(s): orch-hooks status lists them", sv.Unreadable)+st.reset)
	}
	return lines
}
