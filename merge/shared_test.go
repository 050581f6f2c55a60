package merge_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// TestSharedLeaseAcrossClones: three clones ("machines") of one remote,
// each merge a branch of their own
// into main at once through the remote, under the lease shared on it
// (remote mode). Every branch is merged exactly once, none is lost, and
// the lease was taken once per merge (its token counts them).
func TestSharedLeaseAcrossClones(t *testing.T) {
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	// file:// is a real transport too (upload-pack and receive-pack
	// processes); refstore and remotelease test smart HTTP on loopback.
	url := remote.FileURL()
	base := t.TempDir()
	seed := filepath.Join(base, "seed")
	refstoretest.Git(t, base, "clone", "-q", url, seed)
	os.WriteFile(filepath.Join(seed, "a.txt"), []byte("a\n"), 0o644)
	refstoretest.Git(t, seed, "add", "a.txt")
	refstoretest.Git(t, seed, "commit", "-q", "-m", "base")
	refstoretest.Git(t, seed, "push", "-q", "origin", "HEAD:refs/heads/main")

	const n = 3
	tips := make([]string, n)
	repos := make([]*gitstate.Repo, n)
	for i := range repos {
		dir := filepath.Join(base, fmt.Sprintf("m%d", i))
		refstoretest.Git(t, base, "clone", "-q", "-b", "main", url, dir)
		refstoretest.Git(t, dir, "checkout", "-q", "-b", fmt.Sprintf("feat/%d", i))
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), []byte("f\n"), 0o644)
		refstoretest.Git(t, dir, "add", ".")
		refstoretest.Git(t, dir, "commit", "-q", "-m", fmt.Sprintf("f%d", i))
		tips[i] = refstoretest.Git(t, dir, "rev-parse", "HEAD")
		refstoretest.Git(t, dir, "checkout", "-q", "main")
		r, err := gitstate.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := gitstate.Init(r.StateDir()); err != nil {
			t.Fatal(err)
		}
		repos[i] = r
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	results := make([]*merge.Result, n)
	for i, r := range repos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := refstore.Open(r.CommonDir, "origin")
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = merge.New(r).Merge(ctx, merge.Request{
				Branch: fmt.Sprintf("feat/%d", i), Target: "main", Remote: "origin",
				Shared: remotelease.New(s), Wait: 2 * time.Minute, Author: author,
			})
		}()
	}
	wg.Wait()
	tokens := map[uint64]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("machine %d: %v", i, err)
		}
		if !results[i].Pushed || tokens[results[i].SharedToken] {
			t.Fatalf("machine %d: %+v (tokens so far %v)", i, results[i], tokens)
		}
		tokens[results[i].SharedToken] = true
	}
	// Each branch is in main, each merged once: main's first-parent line
	// above base has one commit per branch.
	for i, tip := range tips {
		if _, err := refstoretest.TryGit(remote.Dir, "merge-base", "--is-ancestor", tip, "main"); err != nil {
			t.Fatalf("feat/%d (%s) is not in main", i, tip)
		}
	}
	line := strings.Fields(refstoretest.Git(t, remote.Dir, "rev-list", "--first-parent", "main"))
	if len(line) != n+1 {
		t.Fatalf("main's first-parent line has %d commits, want base + %d (one per merge)", len(line), n)
	}
	rec := refstoretest.Git(t, remote.Dir, "cat-file", "blob", "refs/orch/leases/main:"+refstore.FileName)
	var l remotelease.Lease
	if _, err := statefile.DecodeTOML([]byte(rec), &l); err != nil {
		t.Fatal(err)
	}
	if l.Held || l.Token != n {
		t.Fatalf("lease after the merges: held %v token %d, want free with token %d", l.Held, l.Token, n)
	}
}
