//go:build linux || darwin || freebsd

package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// frame is everything one redraw of the watch view shows. Collecting it is
// separate from rendering it, so a frame for a fixed state, clock and size
// renders the same bytes every time (the golden test).
type frame struct {
	Now        time.Time
	Repo       string
	Interval   time.Duration
	Dispatch   bool
	Jobs       []*gitstate.Job // active and recently ended
	Leases     []*lease.Lease
	Pass       *reaper.Snapshot
	Events     []gitstate.Transition
	Unreadable int
	Note       string // e.g. "standby: pid 42 dispatches"
	// ConfigError is what is wrong with orch.toml now (file:line: key:
	// problem); the view runs on the config loaded at ConfigLoadedAt.
	ConfigError    string
	ConfigLoadedAt time.Time
	ConfigNote     string // a recent reload and what it changed
	// Shared is the shared queue in remote mode; nil in local mode.
	Shared *sharedView
}

// ANSI styles; empty when colour is off (NO_COLOR, or not a terminal).
type styles struct{ bold, dim, red, green, yellow, reset string }

func newStyles(color bool) styles {
	if !color {
		return styles{}
	}
	return styles{bold: "\x1b[1m", dim: "\x1b[2m", red: "\x1b[31m", green: "\x1b[32m", yellow: "\x1b[33m", reset: "\x1b[0m"}
}

// render lays the frame out in at most height lines of at most width
// visible columns. Sections shrink from the bottom (events, then ended
// jobs) when the terminal is short.
func render(f frame, width, height int, color bool) []string {
	st := newStyles(color)
	var out []string
	add := func(s string) { out = append(out, s) }
	mode := "dispatching"
	if !f.Dispatch {
		mode = "watching only"
	}
	add(st.bold + fmt.Sprintf("orch-hooks watch  %s  %s  every %s, %s", termtext.Line(f.Repo), f.Now.Local().Format("15:04:05"), f.Interval, mode) + st.reset)
	if f.Note != "" {
		add(st.yellow + termtext.Line(f.Note) + st.reset)
	}
	switch {
	case f.ConfigError != "":
		// Wrapped, not cut: the end of the message says what to do.
		for _, l := range wrap("CONFIG ERROR "+termtext.Line(f.ConfigError), width, "  ") {
			add(st.bold + st.red + l + st.reset)
		}
		for _, l := range wrap(fmt.Sprintf("  running on the config loaded at %s; no jobs are started until the file is fixed", f.ConfigLoadedAt.Local().Format("15:04:05")), width, "  ") {
			add(st.red + l + st.reset)
		}
	case f.ConfigNote != "":
		add(st.green + termtext.Line(f.ConfigNote) + st.reset)
	}

	groups := map[gitstate.Status][]*gitstate.Job{}
	for _, j := range f.Jobs {
		groups[j.Status] = append(groups[j.Status], j)
	}
	var ended []*gitstate.Job
	for _, s := range []gitstate.Status{gitstate.Done, gitstate.Failed, gitstate.Cancelled} {
		ended = append(ended, groups[s]...)
	}
	sort.SliceStable(ended, func(a, b int) bool { return ended[a].EndedAt.After(ended[b].EndedAt) })

	section := func(title string, color string, jobs []*gitstate.Job, since func(*gitstate.Job) time.Time) []string {
		lines := []string{""}
		lines = append(lines, st.bold+color+fmt.Sprintf("%s (%d)", title, len(jobs))+st.reset)
		if len(jobs) == 0 {
			return lines
		}
		rows := [][]string{{"JOB", "STAGE", "BRANCH", "AGE", "PID", "GATES", "REASON"}}
		for _, j := range jobs {
			rows = append(rows, []string{termtext.Line(j.ID), termtext.Line(j.Stage), termtext.Line(j.Branch), age(f.Now, since(j)), pidString(j.Command.PID), gateSummary(j.Gates), dash(oneLine(j.Reason))})
		}
		for i, r := range table(rows) {
			if i == 0 {
				r = st.dim + r + st.reset
			}
			lines = append(lines, "  "+r)
		}
		return lines
	}
	if f.Shared != nil {
		out = append(out, renderShared(f.Shared, f.Now, st)...)
	}
	out = append(out, section("RUNNING", st.green, groups[gitstate.Running], func(j *gitstate.Job) time.Time { return j.StartedAt })...)
	out = append(out, section("QUEUED", "", groups[gitstate.Queued], func(j *gitstate.Job) time.Time { return j.CreatedAt })...)
	endedLines := section("ENDED (recent)", "", ended, func(j *gitstate.Job) time.Time { return j.EndedAt })

	var tail []string
	tail = append(tail, "", st.bold+fmt.Sprintf("LEASES (%d)", len(f.Leases))+st.reset)
	if len(f.Leases) > 0 {
		rows := [][]string{{"TARGET", "HOLDER", "PID", "TOKEN", "AGE", "STATE"}}
		for _, l := range f.Leases {
			state := "held"
			if stale, _ := lease.Stale(l, f.Now); stale {
				state = st.red + "stale" + st.reset
			}
			rows = append(rows, []string{termtext.Line(l.Target), termtext.Line(l.Holder), fmt.Sprint(l.Owner.PID), fmt.Sprint(l.Token), age(f.Now, l.AcquiredAt), state})
		}
		for i, r := range table(rows) {
			if i == 0 {
				r = st.dim + r + st.reset
			}
			tail = append(tail, "  "+r)
		}
	}
	tail = append(tail, "")
	if f.Pass != nil {
		p := f.Pass
		errs := fmt.Sprintf("%d errors", len(p.Errors))
		if len(p.Errors) > 0 {
			errs = st.red + errs + st.reset
		}
		tail = append(tail, fmt.Sprintf("%sLAST PASS%s %s ago: %d scanned, reaped %d dead / %d exit-code / %d max-running, %d repaired, %d leases reclaimed, %s",
			st.bold, st.reset, age(f.Now, p.At), p.Scanned, p.Tier1, p.Tier2, p.Tier3, p.Repaired, p.LeasesReclaimed, errs))
	} else {
		tail = append(tail, st.bold+"LAST PASS"+st.reset+" none yet")
	}
	if f.Unreadable > 0 {
		tail = append(tail, st.red+fmt.Sprintf("%d unreadable record(s): orch-hooks status lists them", f.Unreadable)+st.reset)
	}
	eventLines := []string{"", st.bold + "EVENTS" + st.reset}
	for _, e := range f.Events {
		eventLines = append(eventLines, "  "+st.dim+e.At.Local().Format("15:04:05")+st.reset+" "+eventLine(e))
	}

	// Fit: always the header, running, queued and the tail; then ended
	// jobs; events get what room is left (newest kept), so they shrink
	// first.
	room := max(height-len(out)-len(tail), 0)
	if len(endedLines) > room {
		endedLines = endedLines[:room]
		if room >= 3 {
			hidden := len(ended) - (room - 3)
			endedLines[room-1] = st.dim + fmt.Sprintf("  ... %d more: orch-hooks status", hidden) + st.reset
		}
	}
	keepEvents := room - len(endedLines)
	if keepEvents < len(eventLines) {
		if keepEvents <= 2 {
			eventLines = nil
		} else {
			eventLines = append(eventLines[:2], eventLines[len(eventLines)-(keepEvents-2):]...)
		}
	}
	out = append(out, endedLines...)
	out = append(out, tail...)
	out = append(out, eventLines...)
	if len(out) > height {
		out = out[:height]
	}
	for i := range out {
		out[i] = truncate(out[i], width)
	}
	return out
}

func gateSummary(gs []gitstate.GateResult) string {
	if len(gs) == 0 {
		return "-"
	}
	pass := 0
	var failed string
	for _, g := range gs {
		if g.Passed {
			pass++
		} else if failed == "" {
			failed = g.Name
		}
	}
	if failed != "" {
		return fmt.Sprintf("%d/%d (%s failed)", pass, len(gs), termtext.Line(failed))
	}
	return fmt.Sprintf("%d/%d", pass, len(gs))
}

// eventLine is one event as watch prints it.
func eventLine(e gitstate.Transition) string {
	from := string(e.From)
	if from == "" {
		from = "new"
	}
	s := fmt.Sprintf("%s %s → %s by %s pid %d", termtext.Line(e.Job), termtext.Line(from), termtext.Line(string(e.To)), termtext.Line(e.Actor), e.PID)
	if e.Reason != "" {
		s += ": " + oneLine(e.Reason)
	}
	return s
}

// table aligns rows into columns separated by two spaces.
func table(rows [][]string) []string {
	widths := map[int]int{}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
			}
		}
		out = append(out, b.String())
	}
	return out
}

// wrap breaks s (no escape codes) into lines of at most width columns,
// at spaces where it can; lines after the first start with indent.
func wrap(s string, width int, indent string) []string {
	var out []string
	r := []rune(s)
	for len(r) > 0 {
		w := width
		if len(out) > 0 {
			r = append([]rune(indent), r...)
		}
		if len(r) <= w || w <= len(indent)+1 {
			out = append(out, string(r))
			break
		}
		cut := w
		for i := w; i > len(indent)+w/2; i-- {
			if r[i] == ' ' {
				cut = i
				break
			}
		}
		out = append(out, strings.TrimRight(string(r[:cut]), " "))
		r = []rune(strings.TrimLeft(string(r[cut:]), " "))
	}
	return out
}

// truncate cuts s to width visible columns, not counting ANSI escapes, and
// closes any style it cut through.
func truncate(s string, width int) string {
	visible, i := 0, 0
	styled := false
	for i < len(s) {
		if s[i] == 0x1b {
			j := strings.IndexByte(s[i:], 'm')
			if j < 0 {
				break
			}
			styled = s[i:i+j+1] != "\x1b[0m"
			i += j + 1
			continue
		}
		if visible == width {
			if styled {
				return s[:i] + "\x1b[0m"
			}
			return s[:i]
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
		visible++
	}
	return s
}
