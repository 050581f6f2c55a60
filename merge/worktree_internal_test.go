package merge

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// The look at the target's worktree made before the lease must not write
// the index: a git status that refreshes stat data takes index.lock, and
// the lease holder's read-tree, finding it taken, fails its merge (seen as
// one merge in 16 lost in bench section 5 before --no-optional-locks).
func TestCleanWorktreeLeavesIndexAlone(t *testing.T) {
	r := gittest.New(t)
	r.Commit(r.Dir, "a file", map[string]string{"a.txt": "a\n"})
	// Same content, new mtime: status would refresh the entry and write
	// the index back.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(r.Dir, "a.txt"), later, later); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(r.Dir, ".git", "index")
	before, err := os.Stat(index)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := gitstate.Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	m := New(repo)
	if wt := m.cleanWorktree(context.Background(), "main"); wt != r.Dir {
		t.Fatalf("cleanWorktree(main) = %q, want %s (clean, checked out there)", wt, r.Dir)
	}
	after, err := os.Stat(index)
	if err != nil {
		t.Fatal(err)
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatalf("the index was rewritten by the look before the lease (mtime %v -> %v)", before.ModTime(), after.ModTime())
	}
	// The same look with optional locks would have written it: the test
	// can tell.
	r.Git(r.Dir, "status", "--porcelain")
	if again, _ := os.Stat(index); again.ModTime().Equal(before.ModTime()) {
		t.Fatal("git status did not rewrite the index either: the test shows nothing")
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
