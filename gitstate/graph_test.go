package gitstate

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os/exec"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// forkyHistory writes n commits with forks and merges through git
// fast-import and returns their ids in creation order.
func forkyHistory(t testing.TB, r *gittest.Repo, n int, seed int64) []string {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "commit refs/heads/hist\nmark :%d\ncommitter T <t@example.invalid> %d +0000\ndata <<EOF\nc%d\nEOF\n", i, 1700000000+i, i)
		switch {
		case i == 1:
		case i > 10 && rng.Intn(5) == 0:
			fmt.Fprintf(&b, "from :%d\nmerge :%d\n", i-1, 1+rng.Intn(i-2))
		case i > 3 && rng.Intn(8) == 0:
			fmt.Fprintf(&b, "from :%d\n", 1+rng.Intn(i-2)) // a fork
		default:
			fmt.Fprintf(&b, "from :%d\n", i-1)
		}
		fmt.Fprintf(&b, "M 644 inline f%d\ndata <<EOF\n%d\nEOF\n\n", i%7, i)
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "get-mark :%d\n", i)
	}
	cmd := exec.Command("git", "fast-import", "--quiet", "--cat-blob-fd=1")
	cmd.Dir = r.Dir
	cmd.Env = r.Env()
	cmd.Stdin = &b
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fast-import: %v", err)
	}
	ids := strings.Fields(string(out))
	if len(ids) != n {
		t.Fatalf("fast-import gave %d marks, want %d", len(ids), n)
	}
	return ids
}

// The in-process walk over the commit-graph answers every pair exactly as
// git merge-base --is-ancestor does, yes and no, on a history with forks
// and merges, including commits newer than the graph.
func TestIsAncestorMatchesGit(t *testing.T) {
	r := gittest.New(t)
	ids := forkyHistory(t, r, 400, 1)
	// The graph covers the first 300 commits only: the rest are read as
	// objects, as commits made after the last `git commit-graph write` are.
	cmd := exec.Command("git", "commit-graph", "write", "--stdin-commits")
	cmd.Dir, cmd.Env = r.Dir, r.Env()
	cmd.Stdin = strings.NewReader(strings.Join(ids[:300], "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("commit-graph write: %v\n%s", err, out)
	}
	repo, err := Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if repo.graphNodes() == nil {
		t.Fatal("the commit-graph was not opened")
	}
	ctx := context.Background()
	// Half the pairs with the walk bounded tightly, so that the fallback to
	// git (commits too many generations apart) answers too.
	defer func(old uint64) { walkGenerationsMax = old }(walkGenerationsMax)
	rng := rand.New(rand.NewSource(2))
	pairs := 200
	if testing.Short() {
		pairs = 50
	}
	yes := 0
	for i := 0; i < pairs; i++ {
		a, b := ids[rng.Intn(len(ids))], ids[rng.Intn(len(ids))]
		walkGenerationsMax = 5000
		if i%2 == 1 {
			walkGenerationsMax = 3
		}
		got, err := repo.IsAncestor(ctx, a, b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := repo.isAncestorGit(ctx, a, b)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("IsAncestor(%s, %s) = %v, git says %v", a[:8], b[:8], got, want)
		}
		if want {
			yes++
		}
	}
	if yes == 0 || yes == pairs {
		t.Fatalf("%d of %d pairs were ancestors: the sample tests only one answer", yes, pairs)
	}
}
