package gitstate

import (
	"errors"
	"math/rand"
	"os/exec"
	"strings"
	"testing"
	"unicode/utf8"
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

// gitBranchVerdict asks git itself: whether git check-ref-format --branch
// takes name, and whether it prints it back unchanged.
func gitBranchVerdict(t *testing.T, repo, name string) (ok, asIs bool) {
	t.Helper()
	cmd := exec.Command("git", "check-ref-format", "--branch", name)
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("git check-ref-format: %v", err)
		}
		return false, false
	}
	return true, strings.TrimSuffix(string(out), "\n") == name
}

// branchNameCorpus is the names held against git: the ones people type by
// mistake, each rule's edge, and random strings over the bytes the rules
// are about.
func branchNameCorpus() []string {
	names := []string{
		"main", "master", "feat/x", "feat/a-b_c.d", "release/1.0", "ünïcode", "a@b", "a@", "@a", "a{b", "a}b",
		"HEAD", "@", "refs/heads/x", "refs/x", "refs/remotes/origin/x", "heads/x", "origin/x", "HEAD/x", "x/HEAD", "FETCH_HEAD", "head",
		"-x", "-", "--", "x-", "x.lock", "x.lock/y", "y/x.lock", ".lock", "x.locked", "a..b", "a.b", "..", ".", "x.", "x/.", "x/..", ".x", "x/.y",
		"a//b", "/a", "a/", "/", "@{-1}", "a@{b", "@{u}", "a@{upstream}", "a~1", "a^", "a:b", "a?b", "a*b", "a[b", "a]b", `a\b`,
		"a b", "a\tb", "a\nb", "a\x01b", "a\x1fb", "a\x7fb", "a\x80b", "a\xffb", "\xc3\x28", "a\xe2\x82", "x\u00a0y", "日本/語",
		"a!b", "a#b", "a$b", "a%b", "a&b", "a'b", `a"b`, "a(b)", "a+b", "a,b", "a;b", "a<b>", "a=b", "a`b", "a|b",
	}
	rng := rand.New(rand.NewSource(14))
	alphabet := []string{"a", "b", ".", ".", "/", "/", "@", "{", "-", "lock", ".lock", "HEAD", "~", " ", "\x7f", "\x01", "\xff", "é", "*", ":"}
	for i := 0; i < 400; i++ {
		var b strings.Builder
		for n := 1 + rng.Intn(6); n > 0; n-- {
			b.WriteString(alphabet[rng.Intn(len(alphabet))])
		}
		names = append(names, b.String())
	}
	return names
}

// gitRefRule is git's rule exactly: over every name of the corpus it takes
// what git check-ref-format --branch takes as-is and refuses the rest, and
// ValidateBranch refuses everything git refuses, plus only the names it
// refuses on its own account (not UTF-8, "@", a full ref name).
func TestGitRefRuleMatchesGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not on PATH")
	}
	repo := t.TempDir()
	if out, err := exec.Command("git", "init", "-q", repo).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	for _, name := range branchNameCorpus() {
		if strings.IndexByte(name, 0) >= 0 {
			continue // cannot be an argument
		}
		ok, asIs := gitBranchVerdict(t, repo, name)
		gitTakes := ok && asIs
		why := gitRefRule(name)
		if gitTakes != (why == "") {
			t.Errorf("%q: git takes it as-is: %v (ok %v, as-is %v); gitRefRule: %q", name, gitTakes, ok, asIs, why)
		}
		err := ValidateBranch(name)
		own := !utf8.ValidString(name) || name == "@" || strings.HasPrefix(name, "refs/")
		switch {
		case !gitTakes && err == nil:
			t.Errorf("ValidateBranch(%q) = nil; git refuses it", name)
		case gitTakes && own && err == nil:
			t.Errorf("ValidateBranch(%q) = nil; want it refused on its own account", name)
		case gitTakes && !own && err != nil:
			t.Errorf("ValidateBranch(%q) = %v; git takes it and no own rule refuses it", name, err)
		case err != nil && !errors.Is(err, ErrBadName):
			t.Errorf("ValidateBranch(%q) = %v, want ErrBadName", name, err)
		}
	}
}

// The names a person types by mistake are refused with the way out.
func TestBranchNameMessages(t *testing.T) {
	for name, want := range map[string]string{
		"HEAD":              "give the branch's own name",
		"@":                 "names the current checkout",
		"refs/heads/feat/x": `"feat/x"`,
		"-x":                "starts with '-'",
		"x.lock":            `ends with ".lock"`,
		"a..b":              `contains ".."`,
		"a\xffb":            "not valid UTF-8",
	} {
		err := ValidateBranch(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateBranch(%q) = %v, want it to say %s", name, err, want)
		}
	}
}
