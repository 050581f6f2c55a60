package gitstate

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
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
		date := 1700000000 + i
		switch {
		case i%13 == 0:
			date -= 5000 // a skewed clock: corrected commit dates differ from dates
		case i == 50:
			date = 4100000000 // 2099: its descendants' offsets overflow 31 bits (GDO2)
		case i == 51:
			date = 1
		}
		fmt.Fprintf(&b, "commit refs/heads/hist\nmark :%d\ncommitter T <t@example.invalid> %d +0000\ndata <<EOF\nc%d\nEOF\n", i, date, i)
		switch {
		case i == 1:
		case i > 10 && rng.Intn(20) == 0: // an octopus
			fmt.Fprintf(&b, "from :%d\nmerge :%d\nmerge :%d\n", i-1, 1+rng.Intn(i-2), 1+rng.Intn(i-2))
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
// git merge-base --is-ancestor does, yes and no, on a history with forks,
// merges and octopus merges, including commits newer than the graph (loose,
// as a job's fresh commits are, or packed, which goes to git), over a
// single graph file and a chain of split ones.
func TestIsAncestorMatchesGit(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		split, packed, v1, nograph bool
	}{
		{"single file, newer commits loose", false, false, false, false},
		{"split chain, newer commits loose", true, false, false, false},
		{"single file, newer commits packed", false, true, false, false},
		{"topological levels only (generation v1)", false, false, true, false},
		{"no commit-graph, every commit loose", false, false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := gittest.New(t)
			ids := forkyHistory(t, r, 400, 1)
			if !tc.packed {
				unpackAll(t, r)
			}
			// The graph covers the first 300 commits only.
			layers := [][]string{ids[:300]}
			if tc.split {
				layers = [][]string{ids[:120], ids[:300]}
			}
			if tc.nograph {
				layers = nil
			}
			for _, l := range layers {
				args := []string{"-c", fmt.Sprintf("commitGraph.generationVersion=%d", map[bool]int{true: 1, false: 2}[tc.v1]),
					"commit-graph", "write", "--stdin-commits"}
				if tc.split {
					args = append(args, "--split=no-merge")
				}
				cmd := exec.Command("git", args...)
				cmd.Dir, cmd.Env = r.Dir, r.Env()
				cmd.Stdin = strings.NewReader(strings.Join(l, "\n") + "\n")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("commit-graph write: %v\n%s", err, out)
				}
			}
			repo, err := Open(r.Dir)
			if err != nil {
				t.Fatal(err)
			}
			g := repo.commitGraph()
			if g == nil {
				t.Fatal("the commit-graph was not opened")
			}
			if want := len(layers); len(g.layers) != want {
				t.Fatalf("%d graph layers, want %d", len(g.layers), want)
			}
			if want := uint32(300); tc.nograph {
				want = 0
			} else if g.total != want {
				t.Fatalf("graph holds %d commits, want %d", g.total, want)
			}
			if !tc.nograph && g.v2 == tc.v1 {
				t.Fatalf("corrected commit dates read: %v, want %v", g.v2, !tc.v1)
			}
			ctx := context.Background()
			rng := rand.New(rand.NewSource(2))
			// Each pair starts a git process. 100 pairs keep both answers
			// and both paths in the sample; the in-process answers are
			// held against go-git and the objects for every commit by
			// TestCommitGraphOracle.
			pairs := 100
			if testing.Short() {
				pairs = 60
			}
			yes, inProcess := 0, 0
			for i := 0; i < pairs; i++ {
				a, b := ids[rng.Intn(len(ids))], ids[rng.Intn(len(ids))]
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
				if _, err := repo.walkAncestor(g, a, b); err == nil {
					inProcess++
				}
			}
			if yes == 0 || yes == pairs {
				t.Fatalf("%d of %d pairs were ancestors: the sample tests only one answer", yes, pairs)
			}
			if !tc.packed && inProcess != pairs {
				t.Fatalf("%d of %d pairs answered in process, want all", inProcess, pairs)
			}
			if tc.packed && (inProcess == 0 || inProcess == pairs) {
				t.Fatalf("%d of %d pairs answered in process: want both paths taken", inProcess, pairs)
			}
		})
	}
}

// unpackAll turns every packed object loose, as fresh commits are.
func unpackAll(t *testing.T, r *gittest.Repo) {
	t.Helper()
	packs, _ := filepath.Glob(filepath.Join(r.Dir, ".git", "objects", "pack", "*.pack"))
	aside := t.TempDir()
	for _, p := range packs {
		moved := filepath.Join(aside, filepath.Base(p))
		if err := os.Rename(p, moved); err != nil {
			t.Fatal(err)
		}
		os.Remove(strings.TrimSuffix(p, ".pack") + ".idx")
		f, err := os.Open(moved)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("git", "unpack-objects", "-q")
		cmd.Dir, cmd.Env, cmd.Stdin = r.Dir, r.Env(), f
		out, err := cmd.CombinedOutput()
		f.Close()
		if err != nil {
			t.Fatalf("unpack-objects: %v\n%s", err, out)
		}
	}
}

// A commit-graph whose structure is damaged is ignored, not believed: the
// answers are git's from the objects. One with garbage in its commit data
// may give wrong answers (git itself trusts it, or crashes: git 2.39 dies
// on the garbled case below) but never panics.
func TestIsAncestorDamagedGraph(t *testing.T) {
	r := gittest.New(t)
	ids := forkyHistory(t, r, 60, 3)
	ctx := context.Background()
	type pair struct {
		a, b string
		want bool
	}
	var pairs []pair
	clean, err := Open(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(ids); i += 3 {
		a, b := ids[i], ids[len(ids)-1-i/2]
		want, err := clean.isAncestorGit(ctx, a, b)
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, pair{a, b, want})
	}
	r.Git(r.Dir, "commit-graph", "write", "--reachable")
	path := filepath.Join(r.Dir, ".git", "objects", "info", "commit-graph")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
		exact  bool
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, true},
		{"bad signature", func(b []byte) []byte { b = bytes.Clone(b); b[0] = 'X'; return b }, true},
		{"empty", func([]byte) []byte { return nil }, true},
		{"commit data garbled", func(b []byte) []byte {
			b = bytes.Clone(b)
			for i := len(b) / 2; i < len(b)-20; i += 7 {
				b[i] = 0xff
			}
			return b
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.damage(data), 0o444); err != nil {
				t.Fatal(err)
			}
			repo, err := Open(r.Dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pairs {
				if !tc.exact {
					if g := repo.commitGraph(); g != nil {
						repo.walkAncestor(g, p.a, p.b) // must not panic
					}
					continue
				}
				got, err := repo.IsAncestor(ctx, p.a, p.b)
				if err != nil {
					t.Fatal(err)
				}
				if got != p.want {
					t.Fatalf("IsAncestor(%s, %s) = %v, want %v", p.a[:8], p.b[:8], got, p.want)
				}
			}
		})
	}
}

// Where commits do not record the parents git answers with (a shallow
// clone's grafts, replace refs), nothing is walked in process.
func TestNoWalkWhenParentsAreRewritten(t *testing.T) {
	for _, setup := range []struct {
		name string
		do   func(r *gittest.Repo, ids []string)
	}{
		{"shallow", func(r *gittest.Repo, ids []string) {
			os.WriteFile(filepath.Join(r.Dir, ".git", "shallow"), []byte(ids[5]+"\n"), 0o644)
		}},
		{"replace ref", func(r *gittest.Repo, ids []string) {
			r.Git(r.Dir, "replace", "--graft", ids[9], ids[2])
		}},
		{"packed replace ref", func(r *gittest.Repo, ids []string) {
			r.Git(r.Dir, "replace", "--graft", ids[9], ids[2])
			r.Git(r.Dir, "pack-refs", "--all")
		}},
	} {
		t.Run(setup.name, func(t *testing.T) {
			r := gittest.New(t)
			ids := forkyHistory(t, r, 12, 4)
			unpackAll(t, r)
			setup.do(r, ids)
			repo, err := Open(r.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if g := repo.commitGraph(); g != nil {
				t.Fatalf("a commit walk is offered (%d graph commits) where git rewrites parents", g.total)
			}
		})
	}
}
