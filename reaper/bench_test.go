package reaper_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// benchEnv seeds a store with running jobs whose monitor is this (live)
// process, the common case a pass must get through quickly, and ended jobs,
// written directly as the store would write them (without an fsync each, so
// that seeding 100,000 jobs takes seconds). Unless bare, each running job's
// marker holds the summary of its record, as Update leaves it; bare
// markers are empty, as a state dir of an older version leaves them, so
// the pass reads every record (the code path before summaries).
func benchEnv(b *testing.B, running, ended int, bare bool) *pipeline.Env {
	b.Helper()
	_, repo, s := pipelinetest.NewState(b)
	self, err := procid.Self()
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().UTC()
	write := func(j *gitstate.Job) {
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(j); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(s.RecordPath(j.ID), buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < running; i++ {
		task := fmt.Sprintf("running-%d", i)
		j := &gitstate.Job{Version: gitstate.RecordVersion, ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement",
			Branch: task, Target: "main", Attempt: 1, Status: gitstate.Running, CreatedAt: now, StartedAt: now, Monitor: self}
		write(j)
		os.WriteFile(filepath.Join(s.Dir(), "active", j.ID), nil, 0o644)
		os.WriteFile(filepath.Join(s.Dir(), "running", j.ID), nil, 0o644)
		if !bare {
			if err := s.Summarise(context.Background(), j.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	events, _ := os.OpenFile(s.EventsPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	defer events.Close()
	for i := 0; i < ended; i++ {
		task := fmt.Sprintf("ended-%d", i)
		j := &gitstate.Job{Version: gitstate.RecordVersion, ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement",
			Branch: task, Target: "main", Attempt: 1, Status: gitstate.Done, CreatedAt: now, StartedAt: now, EndedAt: now}
		write(j)
		line, _ := json.Marshal(gitstate.Transition{At: now, Job: j.ID, From: gitstate.Running, To: gitstate.Done})
		events.Write(append(line, '\n'))
	}
	cfg := config.Default()
	cfg.Stages = []config.Stage{{Name: "implement", Kind: config.KindCommand, Run: "true", FinalizeTimeoutS: 1}}
	return &pipeline.Env{Repo: repo, Store: s, Config: cfg}
}

// BenchmarkPass measures one reaper pass (nothing to reap: every monitor is
// alive). Its cost follows the running jobs, not the ended ones: compare
// running=10/ended=0 with running=10/ended=10000 and ended=100000. The
// markers=bare cases read every running job's record, as passes did
// before markers held summaries (and as they do in an older state dir):
// the baseline of the others. Per running job, the pass costs
// (running=1000 - running=0) / 1000. The /cold case drops what passes
// keep open for the next (markers, monitors' stat files) before each pass,
// as for the first pass of a process (orch-hooks reap).
func BenchmarkPass(b *testing.B) {
	for _, c := range []struct {
		running, ended int
		bare, explain  bool
		cold           bool
	}{{0, 0, false, false, false}, {10, 0, false, false, false}, {10, 10000, false, false, false}, {10, 100000, false, false, false}, {100, 0, false, false, false},
		{1000, 0, false, false, false}, {100, 0, true, false, false}, {1000, 0, true, false, false}, {0, 0, false, true, false}, {1000, 0, false, true, false}, {1000, 0, true, true, false},
		{1000, 0, false, false, true}} {
		name := fmt.Sprintf("running=%d/ended=%d", c.running, c.ended)
		if c.bare {
			name += "/markers=bare"
		} else {
			name += "/markers=summary"
		}
		if c.explain {
			// As orch-hooks reap makes it: every job explained.
			name += "/explain"
		}
		if c.cold {
			// As the first pass of a process (orch-hooks reap): no marker
			// or stat file kept open from a pass before.
			name += "/cold"
		}
		b.Run(name, func(b *testing.B) {
			env := benchEnv(b, c.running, c.ended, c.bare)
			ctx := context.Background()
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if c.cold {
					b.StopTimer()
					stopped := cpuTime()
					env.Store.CloseMarkers()
					reaper.ForgetMonitors()
					cpu0 += cpuTime() - stopped
					b.StartTimer()
				}
				snap, err := reaper.RunOnce(ctx, env, reaper.Options{Explain: c.explain})
				if err != nil || snap.Scanned != c.running || len(snap.Errors) > 0 {
					b.Fatalf("pass: %v, scanned %d, errors %v", err, snap.Scanned, snap.Errors)
				}
			}
			// CPU time (user and system, all threads) per pass: less moved
			// than the wall clock by other processes on a shared machine.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time this process has used, in ns.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
