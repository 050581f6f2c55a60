// Command seed fills a repository's job store (.git/orch) with queued,
// running and ended jobs, for bench/run.sh. The first few queued jobs go
// through Store.Create; the rest are written directly as the store writes
// them (TOML record, active/ and running/ markers, event line for ended
// jobs) without an
// fsync each, as the Go benchmarks do, so that 100,000 jobs take seconds.
//
//	go run ./bench/seed -C DIR [-queued N] [-running N] [-ended N] [-monitor PID] [-bare]
//
// Running jobs name process PID (default: the parent, i.e. the calling
// shell) as their monitor, with its real start time from /proc, so a reaper
// pass finds them alive and leaves them alone. Their running markers hold
// the summary of their record (Store.Summarise), as the store leaves them;
// with -bare they are empty, as a state dir of an older version has them,
// so a pass reads every running job's record (the code path before
// summaries, a baseline).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

func main() {
	dir := flag.String("C", ".", "repository")
	queued := flag.Int("queued", 0, "queued jobs")
	running := flag.Int("running", 0, "running jobs (monitor: -monitor)")
	ended := flag.Int("ended", 0, "ended (done) jobs")
	monitor := flag.Int("monitor", os.Getppid(), "pid of the live monitor of running jobs")
	prefix := flag.String("prefix", "b", "task name prefix (distinct per call)")
	bare := flag.Bool("bare", false, "leave running markers empty (no summary), as an older version did")
	flag.Parse()
	if err := seed(*dir, *prefix, *queued, *running, *ended, *monitor, *bare); err != nil {
		fmt.Fprintln(os.Stderr, "seed:", err)
		os.Exit(1)
	}
}

func seed(dir, prefix string, queued, running, ended, monitor int, bare bool) error {
	repo, err := gitstate.Open(dir)
	if err != nil {
		return err
	}
	if err := gitstate.Init(repo.StateDir()); err != nil {
		return err
	}
	s, err := gitstate.OpenStore(repo.StateDir())
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	host, _ := procid.Host()
	write := func(j *gitstate.Job, active bool) error {
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(j); err != nil {
			return err
		}
		if active {
			// Markers first, as the store writes them: active/ for a
			// queued or running job, running/ too for a running one.
			if err := os.WriteFile(filepath.Join(s.Dir(), "active", j.ID), nil, 0o644); err != nil {
				return err
			}
			if j.Status == gitstate.Running {
				if err := os.MkdirAll(filepath.Join(s.Dir(), "running"), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(s.Dir(), "running", j.ID), nil, 0o644); err != nil {
					return err
				}
			}
		}
		return os.WriteFile(s.RecordPath(j.ID), buf.Bytes(), 0o644)
	}
	job := func(kind string, i int, st gitstate.Status) *gitstate.Job {
		task := fmt.Sprintf("%s-%s-%d", prefix, kind, i)
		return &gitstate.Job{Version: gitstate.RecordVersion, ID: gitstate.JobID(task, "implement", 1), Task: task,
			Stage: "implement", Branch: task, Target: "main", Attempt: 1, Status: st, CreatedAt: now,
			History: []gitstate.Transition{{At: now, Actor: "cli", PID: os.Getpid(), Host: host, To: gitstate.Queued, Reason: "enqueued"}}}
	}
	for i := 0; i < queued; i++ {
		j := job("queued", i, gitstate.Queued)
		if i < 10 {
			j.History = nil
			if _, _, err := s.Create(j); err != nil {
				return err
			}
			continue
		}
		if err := write(j, true); err != nil {
			return err
		}
	}
	if running > 0 {
		mon, err := procid.Of(monitor)
		if err != nil {
			return fmt.Errorf("monitor pid %d: %w", monitor, err)
		}
		for i := 0; i < running; i++ {
			j := job("running", i, gitstate.Running)
			j.StartedAt, j.Monitor = now, mon
			j.History = append(j.History, gitstate.Transition{At: now, Actor: "monitor", PID: monitor, Host: host, From: gitstate.Queued, To: gitstate.Running, Reason: "started by monitor"})
			if err := write(j, true); err != nil {
				return err
			}
			if !bare {
				if err := s.Summarise(context.Background(), j.ID); err != nil {
					return err
				}
			}
		}
	}
	if ended > 0 {
		events, err := os.OpenFile(s.EventsPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer events.Close()
		w := &bytes.Buffer{}
		for i := 0; i < ended; i++ {
			j := job("ended", i, gitstate.Done)
			j.StartedAt, j.FinishedAt, j.EndedAt = now, now, now
			j.Reason, j.EndedBy = "exit code 0, every gate passed", gitstate.EndedByMonitor
			code := 0
			j.ExitCode = &code
			j.History = append(j.History,
				gitstate.Transition{At: now, Actor: "monitor", Host: host, From: gitstate.Queued, To: gitstate.Running},
				gitstate.Transition{At: now, Actor: "monitor", Host: host, From: gitstate.Running, To: gitstate.Done, Reason: j.Reason})
			if err := write(j, false); err != nil {
				return err
			}
			line, _ := json.Marshal(gitstate.Transition{At: now, Job: j.ID, Actor: "monitor", Host: host, From: gitstate.Running, To: gitstate.Done, Reason: j.Reason})
			w.Write(append(line, '\n'))
			if w.Len() > 1<<20 {
				events.Write(w.Bytes())
				w.Reset()
			}
		}
		if _, err := events.Write(w.Bytes()); err != nil {
			return err
		}
	}
	return nil
}
