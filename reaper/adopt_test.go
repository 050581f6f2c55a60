package reaper_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/reaper"
)

// TestAdoptionTrigger: a pass starts an adopter (env.Adopter) for a running
// job with no exit code whose monitor is dead while its command lives, or
// whose command is gone with its status recorded — never ending it lost —
// says so dry without starting one, and leaves tier 1 to a job whose
// command is gone with no recorded status.
func TestAdoptionTrigger(t *testing.T) {
	for _, tc := range []struct {
		name     string
		live     bool   // the command's group lives
		recorded string // the recorder's file, "" for none
		dry      bool
		adopt    bool
	}{
		{"command alive", true, "", false, true},
		{"command alive, dry", true, "", true, false},
		{"command ended, status recorded", false, "0\n", false, true},
		{"command ended, no status", false, "", false, false},
		{"command ended, status cut short", false, "1", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Reaper.DeadTicks = 1
			var started []string
			f.env.Adopter = func(_ context.Context, id string) error {
				started = append(started, id)
				return nil
			}
			j := f.running("t", "build", func(j *gitstate.Job) {
				j.Monitor = deadProc(t)
				if tc.live {
					j.Command = liveProc(t)
				} else {
					j.Command = deadProc(t)
				}
				j.PGID = j.Command.PID
			})
			if tc.recorded != "" {
				if err := f.store().PrepareExit(j.ID); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f.store().ExitPath(j.ID), []byte(tc.recorded), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			snap := f.pass(time.Second, reaper.Options{DryRun: tc.dry})
			adopts := actionsOf(snap, reaper.TierAdopt)
			got := f.get(j.ID)
			switch {
			case tc.adopt:
				if len(started) != 1 || started[0] != j.ID || len(adopts) != 1 || snap.Adopted != 1 {
					t.Fatalf("adopters started %v, actions %+v, adopted %d; want one for %s", started, adopts, snap.Adopted, j.ID)
				}
				if got.Status != gitstate.Running || snap.Tier1 != 0 {
					t.Fatalf("status %s (%s), tier1 %d; an adoptable job must be left to its adopter", got.Status, got.Reason, snap.Tier1)
				}
			case tc.dry && tc.live:
				if len(started) != 0 || len(adopts) != 1 || adopts[0].Outcome == "" {
					t.Fatalf("dry: adopters started %v, actions %+v; want none started, one 'would'", started, adopts)
				}
			default:
				if len(started) != 0 || len(adopts) != 0 {
					t.Fatalf("adopters started %v, actions %+v; want none", started, adopts)
				}
				if got.Status != gitstate.Failed || got.Reason != reaper.ReasonLost {
					t.Fatalf("status %s (%s), want failed (lost)", got.Status, got.Reason)
				}
			}
		})
	}
}
