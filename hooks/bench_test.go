package hooks_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
)

// BenchmarkRun is what an installed hook does once the binary has started
// (in process: no exec, no package init, no orch.toml read): "skip" when
// the last pass is younger than reaper.interval_s (most commits), "pass"
// with interval 0 (a full pass every time). queued is the number of queued
// jobs, which a pass must not read.
func BenchmarkRun(b *testing.B) {
	for _, queued := range []int{0, 1000} {
		for _, mode := range []string{"skip", "pass"} {
			b.Run(fmt.Sprintf("%s/queued=%d", mode, queued), func(b *testing.B) {
				_, repo, s := pipelinetest.NewState(b)
				for i := 0; i < queued; i++ {
					task := fmt.Sprintf("q-%d", i)
					j := &gitstate.Job{ID: gitstate.JobID(task, "implement", 1), Task: task, Stage: "implement", Branch: task, Target: "main", Attempt: 1, Status: gitstate.Queued}
					if i < 10 {
						if _, _, err := s.Create(j); err != nil {
							b.Fatal(err)
						}
						continue
					}
					// The rest as active/ markers only: enough to show that
					// a pass does not list them.
					os.WriteFile(filepath.Join(s.Dir(), "active", j.ID), nil, 0o644)
				}
				cfg := config.Default()
				if mode == "pass" {
					cfg.Reaper.IntervalS = 0
				}
				env := &pipeline.Env{Repo: repo, Store: s, Config: cfg}
				ctx := context.Background()
				hooks.Run(ctx, env, "", io.Discard) // the first pass
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					hooks.Run(ctx, env, "", io.Discard)
				}
			})
		}
	}
}
