package gitstate_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
)

// benchStore is a store with active queued jobs created through the store
// and ended jobs written as records only (the store's bytes, no fsync each),
// so that 100,000 ended jobs take seconds.
func benchStore(b *testing.B, active, ended int) *gitstate.Store {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "orch")
	if err := gitstate.Init(dir); err != nil {
		b.Fatal(err)
	}
	s, err := gitstate.OpenStore(dir)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < active; i++ {
		task := fmt.Sprintf("active-%d", i)
		if _, _, err := s.Create(&gitstate.Job{ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement",
			Branch: task, Target: "main", Attempt: 1, Status: gitstate.Queued}); err != nil {
			b.Fatal(err)
		}
	}
	if ended > 0 {
		// An ended record is a queued one after its claims: read one the
		// store wrote and rewrite its id and status.
		const proto = "proto"
		id := gitstate.JobID(proto, "implement", 1)
		if _, _, err := s.Create(&gitstate.Job{ID: id, Task: proto, Stage: "implement", Branch: proto, Target: "main", Attempt: 1, Status: gitstate.Queued}); err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		if _, _, err := s.Claim(ctx, id, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", nil); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.Claim(ctx, id, []gitstate.Status{gitstate.Running}, gitstate.Done, "exit code 0, every gate passed", nil); err != nil {
			b.Fatal(err)
		}
		data, err := os.ReadFile(s.RecordPath(id))
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < ended; i++ {
			nid := gitstate.JobID(fmt.Sprintf("ended-%d", i), "implement", 1)
			rec := []byte(strings.ReplaceAll(string(data), id, nid))
			if err := os.WriteFile(s.RecordPath(nid), rec, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	return s
}

// BenchmarkActive lists the active jobs: its cost follows the active jobs
// (one record read and decoded each) and not the ended ones.
func BenchmarkActive(b *testing.B) {
	for _, c := range []struct{ active, ended int }{{10, 0}, {10, 100000}, {1000, 0}, {10000, 0}} {
		b.Run(fmt.Sprintf("active=%d/ended=%d", c.active, c.ended), func(b *testing.B) {
			s := benchStore(b, c.active, c.ended)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				l, err := s.Active()
				if err != nil || len(l.Jobs) != c.active {
					b.Fatalf("active: %v, %d jobs", err, len(l.Jobs))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(c.active), "µs/job")
		})
	}
}

// BenchmarkGet reads and decodes one job record.
func BenchmarkGet(b *testing.B) {
	s := benchStore(b, 1, 0)
	id := gitstate.JobID("active-0", "implement", 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Get(id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaim is one compare-and-swap queued → running: lock, read,
// write the record atomically (temp, fsync, rename, fsync dir), append the
// event. The job is created outside the timer.
func BenchmarkClaim(b *testing.B) {
	s := benchStore(b, 0, 0)
	ctx := context.Background()
	ids := make([]string, b.N)
	for i := range ids {
		task := fmt.Sprintf("claim-%d", i)
		ids[i] = gitstate.JobID(task, "implement", 1)
		if _, _, err := s.Create(&gitstate.Job{ID: ids[i], Task: task, Stage: "implement", Branch: task, Target: "main", Attempt: 1, Status: gitstate.Queued}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, won, err := s.Claim(ctx, ids[i], []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", nil); err != nil || !won {
			b.Fatalf("claim: won %v, %v", won, err)
		}
	}
}

// BenchmarkClaimLost is a claim that loses (the job is no longer queued):
// lock and read, nothing written.
func BenchmarkClaimLost(b *testing.B) {
	s := benchStore(b, 1, 0)
	ctx := context.Background()
	id := gitstate.JobID("active-0", "implement", 1)
	if _, _, err := s.Claim(ctx, id, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, won, err := s.Claim(ctx, id, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", nil); err != nil || won {
			b.Fatalf("claim: won %v, %v", won, err)
		}
	}
}
