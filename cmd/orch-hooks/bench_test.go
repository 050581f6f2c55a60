package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
)

// seedJobs fills a repository's store with active queued jobs through the
// store, and ended jobs written directly as records and event lines (the
// same bytes the store writes, without an fsync per job, so that seeding
// 100,000 jobs takes seconds).
func seedJobs(b *testing.B, dir string, active, ended int) {
	b.Helper()
	state := filepath.Join(dir, ".git", "orch")
	if err := gitstate.Init(state); err != nil {
		b.Fatal(err)
	}
	s, err := gitstate.OpenStore(state)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < active; i++ {
		task := fmt.Sprintf("active-%d", i)
		j := &gitstate.Job{ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement", Branch: task, Target: "main", Attempt: 1, Status: gitstate.Queued}
		if _, _, err := s.Create(j); err != nil {
			b.Fatal(err)
		}
	}
	events, err := os.OpenFile(s.EventsPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer events.Close()
	now := time.Now().UTC()
	for i := 0; i < ended; i++ {
		task := fmt.Sprintf("ended-%d", i)
		j := &gitstate.Job{Version: gitstate.RecordVersion, ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement",
			Branch: task, Target: "main", Attempt: 1, Status: gitstate.Done, CreatedAt: now, StartedAt: now, FinishedAt: now, EndedAt: now,
			Reason: "exit code 0, every gate passed", EndedBy: gitstate.EndedByMonitor}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(j); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(s.RecordPath(j.ID), buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
		line, _ := json.Marshal(gitstate.Transition{At: now, Job: j.ID, Actor: "monitor", From: gitstate.Running, To: gitstate.Done})
		events.Write(append(line, '\n'))
	}
}

// BenchmarkStatus measures `orch-hooks status` (in-process, the whole
// command: open, list active, recent ended from the event log, print) with
// 10 active jobs and a growing number of ended ones. Its cost must not grow
// with the ended jobs: compare the ns/op of the sub-benchmarks.
func BenchmarkStatus(b *testing.B) {
	for _, ended := range []int{0, 10000, 100000} {
		b.Run(fmt.Sprintf("active=10/ended=%d", ended), func(b *testing.B) {
			r := gittest.New(b)
			seedJobs(b, r.Dir, 10, ended)
			wd, _ := os.Getwd()
			defer os.Chdir(wd)
			for _, args := range [][]string{{"status"}, {"status", "--json"}} {
				if code := Main(append([]string{"-C", r.Dir}, args...), io.Discard, os.Stderr); code != 0 {
					b.Fatalf("status exited %d", code)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := &cli{stdout: io.Discard, stderr: io.Discard, ctx: context.Background()}
				if err := c.run([]string{"-C", r.Dir, "status", "--json"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
