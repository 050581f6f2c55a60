package reaper_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
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

// TestAdoptionInFinalize: a job whose monitor died in its finalize steps,
// exit code 0 recorded, is adopted, not ended by tier 2; tier 2 stays the
// backstop — in the same pass when no adopter can be started, and instead
// of adoption after pipeline.MaxAdoptions adopters, past finalize_grace_s,
// for a failed command or for a stage without finalize steps, where an
// adopter would add nothing.
func TestAdoptionInFinalize(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stage     string
		exit      int
		adoptions int
		at        time.Duration // the pass, after the last progress stamp
		startErr  bool
		step      bool // step 1 still runs
		adopt     bool
	}{
		{name: "in a step that ended", stage: "fin", at: time.Second, adopt: true},
		{name: "in a step that runs", stage: "fin", at: time.Second, step: true, adopt: true},
		{name: "no adopter can be started", stage: "fin", at: time.Second, startErr: true},
		{name: "adopters exhausted", stage: "fin", adoptions: pipeline.MaxAdoptions, at: time.Second},
		{name: "past the grace", stage: "fin", at: 301 * time.Second},
		{name: "command failed", stage: "fin", exit: 1, at: time.Second},
		{name: "no finalize steps", stage: "build", at: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.cfg.Stages = append(f.cfg.Stages, config.Stage{Name: "fin", Kind: config.KindCommand, Run: "true",
				Finalize: []string{"true", "true"}, FinalizeTimeoutS: 120})
			var started []string
			f.env.Adopter = func(_ context.Context, id string) error {
				if tc.startErr {
					return errors.New("no binary")
				}
				started = append(started, id)
				return nil
			}
			j := f.running("t", tc.stage, func(j *gitstate.Job) {
				j.Monitor, j.Command = deadProc(t), deadProc(t)
				j.PGID = j.Command.PID
				code := tc.exit
				j.ExitCode, j.FinishedAt = &code, base
				j.ProgressAt, j.ProgressBoot = base, bootBase
				j.Adoptions = tc.adoptions
				if tc.exit == 0 && tc.stage == "fin" {
					j.FinalizeStep = 1
					if tc.step {
						j.Finalizer = liveProc(t)
					} else {
						j.Finalizer = deadProc(t)
					}
				}
			})
			snap := f.pass(tc.at)
			got := f.get(j.ID)
			if tc.adopt {
				if len(started) != 1 || snap.Adopted != 1 || len(actionsOf(snap, reaper.TierAdopt)) != 1 || snap.Tier2 != 0 || got.Status != gitstate.Running {
					t.Fatalf("adopters %v, adopted %d, tier2 %d, %s (%s); want one adopter started and the job left running", started, snap.Adopted, snap.Tier2, got.Status, got.Reason)
				}
				return
			}
			if len(started) != 0 || snap.Adopted != 0 {
				t.Fatalf("adopters started %v (adopted %d); want none", started, snap.Adopted)
			}
			if snap.Tier2 != 1 || !got.Status.Terminal() || got.EndedBy != gitstate.EndedByReaperExitCode {
				t.Fatalf("tier2 %d, %s (%s) by %s; want ended by tier 2 in this pass", snap.Tier2, got.Status, got.Reason, got.EndedBy)
			}
			if tc.startErr && len(snap.Errors) != 1 {
				t.Errorf("pass errors %+v; want the failed start reported", snap.Errors)
			}
		})
	}
}
