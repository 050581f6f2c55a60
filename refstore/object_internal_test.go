package refstore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
)

// TestLooseObjectsAreGits: the objects written without git are the ones
// git writes for the same record (same ids), and git finds them sound.
func TestLooseObjectsAreGits(t *testing.T) {
	t.Parallel()
	dir := refstoretest.NewMachine(t)
	s, err := Open(dir, "origin")
	if err != nil {
		t.Fatal(err)
	}
	if f := s.objectFormat(context.Background()); f != "sha1" {
		t.Skipf("object format %s", f)
	}
	const unix = 1767225600
	data := "token = 7\nholder = \"a\\u0000b ü\"\n"
	const msg = "orch: leases/main\n\nversion 00112233445566778899aabb\n"
	first, err := s.prepareLoose(msg, []byte(data), "", unix)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.prepareLoose(msg, []byte(data+"x = 1\n"), first, unix)
	if err != nil {
		t.Fatal(err)
	}
	// The three steps Prepare takes in a repository of another format.
	blob := gitIn(t, dir, data+"x = 1\n", nil, "hash-object", "-w", "--stdin")
	tree := gitIn(t, dir, "100644 blob "+blob+"\t"+FileName+"\n", nil, "mktree")
	date := fmt.Sprintf("@%d +0000", unix)
	env := append(append([]string(nil), signature...), "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
	want := gitIn(t, dir, msg, env, "commit-tree", tree, "-p", first)
	if id != want {
		t.Fatalf("loose commit %s, git's %s", id, want)
	}
	refstoretest.Git(t, dir, "update-ref", "refs/check", id)
	if out, err := refstoretest.TryGit(dir, "fsck", "--strict", "--no-dangling"); err != nil {
		t.Fatalf("git fsck: %v\n%s", err, out)
	}
}

// TestSHA256Repository: a machine whose repository uses SHA-256 writes
// its records through git, and they round-trip.
func TestSHA256Repository(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	remote := base + "/remote.git"
	if out, err := refstoretest.TryGit(base, "init", "-q", "--bare", "--object-format=sha256", remote); err != nil {
		t.Skipf("no sha256 support: %v %s", err, out)
	}
	local := base + "/local.git"
	refstoretest.Git(t, base, "init", "-q", "--bare", "--object-format=sha256", local)
	s, err := Open(local, "file://"+remote)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := s.Prepare(ctx, "x", []byte("x = 1\n"), "")
	if err != nil || len(id) != 64 {
		t.Fatalf("prepare: %q, %v", id, err)
	}
	if err := s.Update(ctx, []Update{{Ref: Prefix + "x", New: id}}, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Read(ctx, "x")
	if err != nil || rec.ID != id || string(rec.Data) != "x = 1\n" {
		t.Fatalf("read back %+v, %v", rec, err)
	}
}

func gitIn(t *testing.T, dir, stdin string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return strings.TrimSpace(string(out))
}
