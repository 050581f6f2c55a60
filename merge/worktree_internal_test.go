package merge

import (
	"context"
	"os"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// inTheWay is git's rule for a local change against the paths a merge
// changes: the same path, a file where the merge needs a directory, or a
// file under a path the merge makes a file.
func TestInTheWay(t *testing.T) {
	changed := map[string]bool{"a.txt": true, "d/e/f.txt": true, "g": true}
	dirs := dirsOf(changed)
	for path, want := range map[string]bool{
		"a.txt":     true,
		"b.txt":     false,
		"d":         true, // an untracked file where d/ must be
		"d/e":       true,
		"d/e/x.txt": false, // a neighbour in the same directory
		"d/e/f.txt": true,
		"g/h":       true, // under a path the merge makes a file
		"g2":        false,
		"a.txt.bak": false,
	} {
		if got := inTheWay(path, changed, dirs); got != want {
			t.Errorf("inTheWay(%q) = %v, want %v", path, got, want)
		}
	}
}

// Identity answers as git var GIT_COMMITTER_IDENT does: the environment
// first (without starting git), then the repository's config.
func TestIdentityAsGitVar(t *testing.T) {
	r := gittest.New(t)
	repo, err := gitstate.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r.Git(r.Dir, "config", "user.name", "Config Name")
	r.Git(r.Dir, "config", "user.email", "config@example.invalid")
	t.Setenv("GIT_COMMITTER_NAME", "Env Name")
	t.Setenv("GIT_COMMITTER_EMAIL", "env@example.invalid")
	if n, e := Identity(context.Background(), repo); n != "Env Name" || e != "env@example.invalid" {
		t.Errorf("with the environment set: %s <%s>", n, e)
	}
	os.Unsetenv("GIT_COMMITTER_EMAIL") // restored by the t.Setenv above
	if n, e := Identity(context.Background(), repo); n != "Env Name" || e != "config@example.invalid" {
		t.Errorf("with only GIT_COMMITTER_NAME set: %s <%s>, want git's mix of environment and config", n, e)
	}
}

// FuzzPendingRecordBytes: the pending worktree move record keeps any bytes
// of its paths (a repository path need not be UTF-8) exactly, as
// savePending writes it and finishSync reads it.
func FuzzPendingRecordBytes(f *testing.F) {
	f.Add("/r\xffpo", "caf\xe9")
	f.Fuzz(func(t *testing.T, a, b string) {
		n := 0
		want := statefile.MapStrings(pending{Target: "t", Worktree: "w", GitDir: "g", From: "f", To: "o", Phase: "p", LockDev: 1, LockIno: 2}, func(string) string {
			n++
			if n%2 == 0 {
				return a
			}
			return b
		})
		data, err := statefile.EncodeTOML(want)
		if err != nil {
			t.Fatal(err)
		}
		var got pending
		if _, err := statefile.DecodeTOML(data, &got); err != nil {
			t.Fatalf("the record written does not read back: %v\n%s", err, data)
		}
		if got != want {
			t.Fatalf("round trip changed the record: %+v, want %+v", got, want)
		}
	})
}
