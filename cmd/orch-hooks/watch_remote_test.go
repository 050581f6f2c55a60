//go:build linux || darwin || freebsd

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
)

// The live view in remote mode shows the shared queue: each job with the
// host that claimed it, its progress and beats, and for a running job how
// long this machine has seen its record unchanged; a held shared lease;
// the last pass's failure.
func TestRenderShared(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	running := pipeline.SharedJob{Entry: remotejob.Entry{Name: "jobs/feat-a.implement.1.x", VersionID: "v1", Job: &remotejob.Job{
		ID: "feat-a.implement.1.x", Stage: "implement", Branch: "feat/a", Status: gitstate.Running, Host: "b",
		StartedAt: now.Add(-90 * time.Second), Beats: 7, Progress: "finalize 1/2"}}, Unchanged: 12 * time.Second, Seen: true}
	queued := pipeline.SharedJob{Entry: remotejob.Entry{Name: "jobs/feat-b.implement.1.y", VersionID: "v2", Job: &remotejob.Job{
		ID: "feat-b.implement.1.y", Stage: "implement", Branch: "feat/b", Status: gitstate.Queued, CreatedAt: now.Add(-5 * time.Second)}}}
	f := frame{Now: now, Repo: "/r", Interval: time.Second, Dispatch: true, Shared: &sharedView{
		Remote: "origin", Host: "a", Jobs: []pipeline.SharedJob{running, queued},
		Leases: []*remotelease.Lease{{Target: "main", Held: true, Holder: "merge feat/c", Token: 4}},
		Err:    "remote origin unreachable: fatal: nope",
	}}
	text := strings.Join(render(f, 160, 60, false), "\n")
	for _, want := range []string{
		"SHARED QUEUE on origin (this machine: a)",
		"remote origin unreachable: fatal: nope",
		"feat-a.implement.1.x  running  b     implement  feat/a  1m   finalize 1/2  7 (unchanged for 12s as seen here)",
		"feat-b.implement.1.y  queued   -     implement  feat/b  5s   -             0",
		"lease main: held by merge feat/c on -, token 4",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the view lacks %q:\n%s", want, text)
		}
	}
	// Local mode: no shared section.
	f.Shared = nil
	if text := strings.Join(render(f, 160, 60, false), "\n"); strings.Contains(text, "SHARED") {
		t.Errorf("local mode shows a shared section:\n%s", text)
	}
}
