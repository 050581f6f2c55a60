package gitstate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"

	"github.com/orch-hooks/orch-hooks/procid"
)

// deadIdentity is the identity of a process that has ended (and been
// waited for): confirmed dead by identity.
func deadIdentity(t *testing.T) procid.Identity {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := procid.Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	return id
}

// TestAdopt: the compare-and-swap on the monitor identity takes a running
// job only from the monitor the caller saw, and only once that one is dead
// by identity; a refusal writes nothing.
func TestAdopt(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	dead := deadIdentity(t)
	j := queued("t", "build", 1)
	if _, _, err := s.Create(j); err != nil {
		t.Fatal(err)
	}
	if _, won, err := s.Claim(ctx, j.ID, []Status{Queued}, Running, "", func(j *Job) { j.Monitor = self }); !won || err != nil {
		t.Fatalf("claim: %v %v", won, err)
	}
	before, _ := os.ReadFile(s.RecordPath(j.ID))
	// The monitor lives (this process): refused.
	if _, err := s.Adopt(ctx, j.ID, self, dead); !errors.Is(err, ErrNotAdoptable) {
		t.Fatalf("adopting from a live monitor: %v, want ErrNotAdoptable", err)
	}
	// Not the monitor the record names: refused.
	if _, err := s.Adopt(ctx, j.ID, dead, self); !errors.Is(err, ErrNotAdoptable) {
		t.Fatalf("adopting from a monitor the record does not name: %v, want ErrNotAdoptable", err)
	}
	if after, _ := os.ReadFile(s.RecordPath(j.ID)); string(after) != string(before) {
		t.Fatal("a refused adoption wrote the record")
	}
	// The named monitor dead: taken, once.
	if _, err := s.Update(ctx, j.ID, "", func(j *Job) error { j.Monitor = dead; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := s.Adopt(ctx, j.ID, dead, self)
	if err != nil || got.Monitor != self || got.ProgressAt.IsZero() || got.Adoptions != 1 {
		t.Fatalf("adopt from a dead monitor: %v, monitor %v, adoptions %d", err, got.Monitor, got.Adoptions)
	}
	if _, err := s.Adopt(ctx, j.ID, dead, self); !errors.Is(err, ErrNotAdoptable) {
		t.Fatalf("a second adoption from the same dead monitor: %v, want ErrNotAdoptable", err)
	}
}

// TestRecordedExit: only a whole "N\n" is a status; no file or a cut one
// is none; anything else is an error naming the file.
func TestRecordedExit(t *testing.T) {
	s := newStore(t)
	for _, tc := range []struct {
		data   string
		code   int
		ok     bool
		errors bool
	}{
		{"0\n", 0, true, false},
		{"137\n", 137, true, false},
		{"13", 0, false, false},
		{"", 0, false, false},
		{"x\n", 0, false, true},
		{"300\n", 0, false, true},
	} {
		if err := os.WriteFile(s.ExitPath("j"), []byte(tc.data), 0o644); err != nil {
			t.Fatal(err)
		}
		code, ok, err := s.RecordedExit("j")
		if code != tc.code || ok != tc.ok || (err != nil) != tc.errors {
			t.Errorf("%q: %d %v %v; want %d %v error=%v", tc.data, code, ok, err, tc.code, tc.ok, tc.errors)
		}
	}
	if err := s.RemoveExit("j"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.RecordedExit("j"); ok || err != nil {
		t.Errorf("no file: %v %v", ok, err)
	}
}

// TestStepExits: a finalize step's exit file reads as the command's does,
// and RemoveStepExits removes every step file of its job and nothing else
// (not the command's, not another job's).
func TestStepExits(t *testing.T) {
	s := newStore(t)
	if err := s.PrepareExit("j"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{s.StepExitPath("j", 1), s.StepExitPath("j", 12), s.StepExitPath("jj", 1), s.ExitPath("j")} {
		if err := os.WriteFile(p, []byte("4\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if code, ok, err := s.RecordedStepExit("j", 12); code != 4 || !ok || err != nil {
		t.Fatalf("step 12: %d %v %v, want 4", code, ok, err)
	}
	if _, ok, err := s.RecordedStepExit("j", 2); ok || err != nil {
		t.Fatalf("step 2, no file: %v %v, want none", ok, err)
	}
	if err := s.RemoveStepExits("j"); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{s.StepExitPath("j", 1): false, s.StepExitPath("j", 12): false, s.StepExitPath("jj", 1): true, s.ExitPath("j"): true} {
		if _, err := os.Lstat(p); (err == nil) != want {
			t.Errorf("%s: %v, want there %v", p, err, want)
		}
	}
}
