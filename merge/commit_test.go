package merge_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
)

// Request.Commit: the merge merges exactly the commit the caller's gates
// judged. When the branch has moved past it, the merge refuses with
// ErrBranchMoved and writes nothing; when the branch is still there, it
// merges that commit.
func TestMergeJudgedCommit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	judged := f.commitOn("feat/j", "main", map[string]string{"j.txt": "judged\n"})
	tgt := f.commitMain(map[string]string{"m.txt": "m\n"})

	moved := f.commitOn("feat/j", "feat/j", map[string]string{"u.txt": "unchecked\n"})
	refs := f.refs()
	_, err := f.merge(merge.Request{Branch: "feat/j", Commit: judged})
	if !errors.Is(err, merge.ErrBranchMoved) {
		t.Fatalf("merge of %s with the branch at %s: %v; want ErrBranchMoved", judged, moved, err)
	}
	if got := f.refs(); got != refs {
		t.Fatalf("refs changed by a refused merge:\n%s\nwas\n%s", got, refs)
	}
	if f.rev("main") != tgt {
		t.Fatal("main moved")
	}
	f.leaseFree("main")

	f.git("update-ref", "refs/heads/feat/j", judged, moved)
	res := f.mustMerge(merge.Request{Branch: "feat/j", Commit: judged})
	if res.Kind != merge.Merged || res.BranchTip != judged || !f.isAncestor(judged, "main") {
		t.Fatalf("result %+v; want %s merged into main", res, judged)
	}
	if st := f.status(); st != "" {
		t.Fatalf("main's worktree after the merge: %s", st)
	}
}

// FinishOwed finishes a worktree move a crashed merge left owed, without a
// later merge into the target: never waiting for a held lease (it reports
// the target busy and leaves the move to the holder), and finishing it
// once the lease is free.
func TestFinishOwedWithoutWaiting(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.commitOn("feat/o", "main", map[string]string{"o.txt": "o\n"})
	f.commitMain(map[string]string{"m.txt": "m\n"})
	runCrashing(t, f, "feat/o", "merge.update_ref")
	lock := filepath.Join(f.repo.CommonDir, "index.lock")
	if _, err := os.Lstat(lock); err != nil {
		t.Fatalf("after a crash at merge.update_ref: index.lock %v; want it held for the owed sync", err)
	}
	if owed, err := f.m.Owed(); err != nil || len(owed) != 1 || owed[0] != "main" {
		t.Fatalf("owed %v, %v; want [main]", owed, err)
	}

	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The crashed merger's lease is stale; this test takes it over and
	// holds it, as a live merger would.
	l, err := f.m.Leases.Acquire(ctx, "main", lease.Request{Holder: "test", Owner: self, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := f.m.FinishOwed(ctx, "reaper", false)
	if err != nil || len(got) != 1 || !got[0].Busy || got[0].Finished || got[0].Err != nil {
		t.Fatalf("FinishOwed with the lease held: %+v, %v; want main busy", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("FinishOwed took %s with the lease held: it must not wait", d)
	}
	if _, err := os.Lstat(lock); err != nil {
		t.Fatalf("index.lock %v after a busy FinishOwed; want it left to the lease holder", err)
	}
	if err := f.m.Leases.Release(ctx, "main", l.Token); err != nil {
		t.Fatal(err)
	}

	got, err = f.m.FinishOwed(ctx, "reaper", false)
	if err != nil || len(got) != 1 || !got[0].Finished || got[0].Err != nil {
		t.Fatalf("FinishOwed: %+v, %v; want main finished", got, err)
	}
	if _, err := os.Lstat(lock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("index.lock after FinishOwed: %v; want it committed", err)
	}
	if st := f.status(); st != "" {
		t.Errorf("main's worktree after FinishOwed: %s; want it at main", st)
	}
	if _, err := f.g.TryGit(f.dir, "diff", "--cached", "--quiet", "main"); err != nil {
		t.Error("main's index does not hold main's tree after FinishOwed")
	}
	if owed, err := f.m.Owed(); err != nil || len(owed) != 0 {
		t.Errorf("owed %v, %v after FinishOwed; want none", owed, err)
	}
	f.leaseFree("main")
}

// A pending-move record that does not parse, or names another target than
// its file is for, is reported with its path and left in place; the other
// records are still finished.
func TestFinishOwedReportsBadRecords(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dir := filepath.Join(f.repo.StateDir(), "merges")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	garbled := filepath.Join(dir, "main.toml")
	misnamed := filepath.Join(dir, "other.toml")
	os.WriteFile(garbled, []byte("target = \n"), 0o644)
	os.WriteFile(misnamed, []byte("target = \"main\"\n"), 0o644)
	got, err := f.m.FinishOwed(context.Background(), "reaper", false)
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]bool{}
	for _, o := range got {
		if o.Err == nil || o.Finished {
			t.Errorf("%+v: want an error, nothing finished", o)
		}
		paths[o.Path] = true
	}
	if !paths[garbled] || !paths[misnamed] || len(got) != 2 {
		t.Errorf("reported %+v; want %s and %s", got, garbled, misnamed)
	}
	for _, p := range []string{garbled, misnamed} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v; want it left in place", p, err)
		}
	}
}
