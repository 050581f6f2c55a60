//go:build linux || darwin || freebsd

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// jobJSON is the stable --json shape of a job (DESIGN.md "Command line").
// Times are RFC 3339 in UTC, null until set; exit_code is null until the
// command's exit has been recorded.
type jobJSON struct {
	ID         string                `json:"id"`
	Task       string                `json:"task"`
	Stage      string                `json:"stage"`
	Branch     string                `json:"branch"`
	Target     string                `json:"target"`
	Attempt    int                   `json:"attempt"`
	Status     gitstate.Status       `json:"status"`
	PID        int                   `json:"pid"`
	MonitorPID int                   `json:"monitor_pid"`
	PGID       int                   `json:"pgid"`
	Host       string                `json:"host"`
	ExitCode   *int                  `json:"exit_code"`
	Reason     string                `json:"reason"`
	EndedBy    string                `json:"ended_by"`
	NextJob    string                `json:"next_job"`
	CreatedAt  *string               `json:"created_at"`
	StartedAt  *string               `json:"started_at"`
	FinishedAt *string               `json:"finished_at"`
	EndedAt    *string               `json:"ended_at"`
	Gates      []gitstate.GateResult `json:"gates"`
	Merging    string                `json:"merging,omitempty"`
	PrevCommit string                `json:"prev_commit,omitempty"`
	// Reaper is what a reaper pass made now would see and do (status and
	// show, for a running job; absent otherwise).
	Reaper *reaper.Explanation `json:"reaper,omitempty"`
}

func rfc3339(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func toJobJSON(j *gitstate.Job) jobJSON {
	gates := j.Gates
	if gates == nil {
		gates = []gitstate.GateResult{}
	}
	return jobJSON{
		ID: j.ID, Task: j.Task, Stage: j.Stage, Branch: j.Branch, Target: j.Target,
		Attempt: j.Attempt, Status: j.Status,
		PID: j.Command.PID, MonitorPID: j.Monitor.PID, PGID: j.PGID, Host: j.Monitor.Host,
		ExitCode: j.ExitCode, Reason: j.Reason, EndedBy: j.EndedBy, NextJob: j.NextJob,
		CreatedAt: rfc3339(j.CreatedAt), StartedAt: rfc3339(j.StartedAt),
		FinishedAt: rfc3339(j.FinishedAt), EndedAt: rfc3339(j.EndedAt),
		Gates: gates, Merging: j.Merging, PrevCommit: j.PrevCommit,
	}
}

type unreadableJSON struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

func toUnreadableJSON(us []*gitstate.UnreadableError) []unreadableJSON {
	out := []unreadableJSON{}
	for _, u := range us {
		out = append(out, unreadableJSON{Path: u.Path, Error: u.Err.Error()})
	}
	return out
}

// configErrorJSON is status --json's "config_error": what is wrong with
// orch.toml (or an ORCH_* override), null when nothing is. file is empty
// and key is the variable's name for an override; line is 0 when unknown.
type configErrorJSON struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Key     string `json:"key"`
	Message string `json:"message"`
	Error   string `json:"error"` // the whole message, as the text output shows it
}

func toConfigErrorJSON(err error) *configErrorJSON {
	if err == nil {
		return nil
	}
	out := &configErrorJSON{Message: err.Error(), Error: err.Error()}
	var ce *config.Error
	if errors.As(err, &ce) {
		out.File, out.Line, out.Key, out.Message = ce.File, ce.Line, ce.Key, ce.Msg
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// age formats a duration the way a status table wants it: short and coarse.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func pidString(p int) string {
	if p == 0 {
		return "-"
	}
	return fmt.Sprint(p)
}
