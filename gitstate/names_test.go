package gitstate

import (
	"errors"
	"strings"
	"testing"
)

func TestNameValidation(t *testing.T) {
	good := []string{"main", "feat/a", "feat/a-b_c.d", "release/1.0", "ünïcode"}
	bad := []string{"", "../x", "a/../../b", "..", "x\x00y", "tab\there", "nl\n", "-rf", "/abs", "trail/",
		"a//b", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", `a\b`, "a.lock", ".hidden", "a/.b", "a.", "@", "a@{b", "\x7f"}
	for _, n := range good {
		if err := ValidateBranch(n); err != nil {
			t.Errorf("ValidateBranch(%q) = %v, want ok", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateBranch(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateBranch(%q) = %v, want ErrBadName", n, err)
		}
		if err := ValidateTask(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateTask(%q) = %v, want ErrBadName", n, err)
		}
	}
	for _, n := range []string{"", "a/b", "..", "../x", ".x", "-x", "a b", "a\x00", "ü"} {
		if err := ValidateStage(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateStage(%q) = %v, want ErrBadName", n, err)
		}
		if err := ValidateJobID(n); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateJobID(%q) = %v, want ErrBadName", n, err)
		}
	}
}

func TestJobID(t *testing.T) {
	a := JobID("feat/a", "implement", 1)
	if a != JobID("feat/a", "implement", 1) {
		t.Fatal("JobID is not deterministic")
	}
	seen := map[string]bool{}
	for _, in := range []struct {
		task, stage string
		attempt     int
	}{
		{"feat/a", "implement", 1}, {"feat-a", "implement", 1}, {"feat/a", "implement", 2},
		{"feat/a", "review", 1}, {"a-b", "c", 1}, {"a", "b-c", 1}, {"ünï/cødé", "s", 1},
	} {
		id := JobID(in.task, in.stage, in.attempt)
		if err := ValidateJobID(id); err != nil {
			t.Errorf("JobID%v = %q is not a valid id: %v", in, id, err)
		}
		if seen[id] {
			t.Errorf("JobID%v = %q collides", in, id)
		}
		seen[id] = true
	}
}

// A refused character is named whole, not by its first byte.
func TestComponentErrorNamesTheCharacter(t *testing.T) {
	for name, want := range map[string]string{"実装": "'実'", "a\x1bb": `'\x1b'`, "a\xffb": `'\xff'`, "a/b": "'/'"} {
		if err := ValidateStage(name); err == nil || !strings.Contains(err.Error(), "contains "+want) {
			t.Errorf("ValidateStage(%q) = %v, want it to say contains %s", name, err, want)
		}
	}
}
