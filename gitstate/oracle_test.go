package gitstate

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	cgraph "github.com/go-git/go-git/v5/plumbing/format/commitgraph/v2"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// These tests hold gitstate's hand-written commit-graph reader and loose
// commit parsing against an independent implementation: go-git's
// plumbing/format/commitgraph/v2 reader and its object decoding, on
// repositories real git wrote. A third answer comes from the commit objects
// themselves (decoded by go-git): the topological level and corrected
// commit date git's format documentation defines, and reachability.

// commitView is what one reader says about one commit. Pos is -1 for a
// commit the graph does not hold (then the other fields are zero).
type commitView struct {
	ID        string
	Pos       int64
	Parents   []string // ids, in order
	Level     uint64   // topological level (generation number v1)
	Corrected uint64   // corrected commit date (v2); 0 when the graph has none
	Time      int64    // committer time as the graph records it
}

// gitstateViews is gitstate's answer for each id.
func gitstateViews(t *testing.T, g *commitGraph, ids []string) []commitView {
	t.Helper()
	byPos := map[uint32]string{}
	for _, id := range ids {
		if pos, ok := g.lookup(mustHex(t, id)); ok {
			byPos[pos] = id
		}
	}
	views := make([]commitView, len(ids))
	for i, id := range ids {
		views[i] = commitView{ID: id, Pos: -1}
		pos, ok := g.lookup(mustHex(t, id))
		if !ok {
			continue
		}
		views[i].Pos = int64(pos)
		ps, err := g.parents(pos, nil)
		if err != nil {
			t.Fatalf("gitstate: parents of %s: %v", id, err)
		}
		for _, p := range ps {
			pid, ok := byPos[p]
			if !ok {
				pid = fmt.Sprintf("(position %d, no known id)", p)
			}
			views[i].Parents = append(views[i].Parents, pid)
		}
		level, date, err := g.generation(pos)
		if err != nil {
			t.Fatalf("gitstate: generation of %s: %v", id, err)
		}
		views[i].Level, views[i].Corrected = uint64(level), date
		_, rec, err := g.entry(pos)
		if err != nil {
			t.Fatal(err)
		}
		views[i].Time = graphCommitTime(rec[g.hashLen+8:])
	}
	return views
}

// graphCommitTime is the 34-bit commit time at the end of a commit data
// record (after the tree id and the two parent fields).
func graphCommitTime(b []byte) int64 {
	return int64(uint64(binary.BigEndian.Uint32(b)&3)<<32 | uint64(binary.BigEndian.Uint32(b[4:])))
}

// goGitViews is go-git's commit-graph reader's answer for each id. Its
// corrected dates count only when the whole chain has them
// (HasGenerationV2 of the top layer): go-git answers a lower layer's
// commits from that layer alone, so under a top layer written without
// generation data it still reports the lower layer's dates, where git
// (and gitstate) use none.
func goGitViews(t *testing.T, idx cgraph.Index, ids []string) []commitView {
	t.Helper()
	views := make([]commitView, len(ids))
	for i, id := range ids {
		views[i] = commitView{ID: id, Pos: -1}
		pos, err := idx.GetIndexByHash(plumbing.NewHash(id))
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("go-git: look up %s: %v", id, err)
		}
		d, err := idx.GetCommitDataByIndex(pos)
		if err != nil {
			t.Fatalf("go-git: commit data of %s: %v", id, err)
		}
		views[i].Pos = int64(pos)
		for _, p := range d.ParentHashes {
			views[i].Parents = append(views[i].Parents, p.String())
		}
		views[i].Level = d.Generation
		if idx.HasGenerationV2() {
			views[i].Corrected = d.GenerationV2
		}
		views[i].Time = d.When.Unix()
	}
	return views
}

// objectViews is what the commit objects say a graph holding the commits
// in inGraph must record: parents as written, the level and corrected
// date computed as gitformat-commit-graph(5) defines them (a root's level
// is 1, a child's one more than its highest parent's; the corrected date
// is the commit date raised to one more than the parents' when they are
// later). Positions are left to the readers.
func objectViews(commits map[string]*object.Commit, ids []string, inGraph map[string]bool, v2 bool) []commitView {
	level := map[string]uint64{}
	corrected := map[string]uint64{}
	var compute func(id string)
	compute = func(id string) {
		if _, ok := level[id]; ok {
			return
		}
		c := commits[id]
		var l, d uint64
		for _, p := range c.ParentHashes {
			compute(p.String())
			l, d = max(l, level[p.String()]), max(d, corrected[p.String()])
		}
		level[id] = l + 1
		corrected[id] = max(uint64(c.Committer.When.Unix()), d+1)
	}
	views := make([]commitView, len(ids))
	for i, id := range ids {
		views[i] = commitView{ID: id, Pos: -1}
		if !inGraph[id] {
			continue
		}
		compute(id)
		c := commits[id]
		for _, p := range c.ParentHashes {
			views[i].Parents = append(views[i].Parents, p.String())
		}
		views[i].Level = level[id]
		if v2 {
			views[i].Corrected = corrected[id]
		}
		views[i].Time = c.Committer.When.Unix()
	}
	return views
}

// goGitCommits decodes every id with go-git's object storage (loose or
// packed).
func goGitCommits(t *testing.T, gitDir string, ids []string) map[string]*object.Commit {
	t.Helper()
	st := filesystem.NewStorage(osfs.New(gitDir), cache.NewObjectLRUDefault())
	defer st.Close()
	commits := make(map[string]*object.Commit, len(ids))
	for _, id := range ids {
		c, err := object.GetCommit(st, plumbing.NewHash(id))
		if err != nil {
			t.Fatalf("go-git: read commit %s: %v", id, err)
		}
		commits[id] = c
	}
	return commits
}

// ancestry is reachability computed from the decoded objects: anc[b][a]
// says a is an ancestor of b (or b itself).
func ancestry(commits map[string]*object.Commit, ids []string) map[string]map[string]bool {
	anc := map[string]map[string]bool{}
	var walk func(id string) map[string]bool
	walk = func(id string) map[string]bool {
		if s, ok := anc[id]; ok {
			return s
		}
		s := map[string]bool{id: true}
		for _, p := range commits[id].ParentHashes {
			for a := range walk(p.String()) {
				s[a] = true
			}
		}
		anc[id] = s
		return s
	}
	for _, id := range ids {
		walk(id)
	}
	return anc
}

func mustHex(t *testing.T, id string) []byte {
	t.Helper()
	b, err := hex.DecodeString(id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// oracleHistory writes n commits through git fast-import and returns their
// ids in creation order (every parent before its children). It has long
// linear runs, forks, many two-parent merges, octopus merges of three to
// five parents (the graph's extra-edge list), a second root, commit dates
// older than their parents' (corrected dates differ from dates), and a
// commit dated 2128 (a time past 32 bits) followed by one dated 1970: every descendant of that
// pair has a corrected date offset above 2^31-1, which git stores in the
// generation data overflow chunk (GDO2).
func oracleHistory(t testing.TB, dir string, env []string, n int, seed int64) []string {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	var b bytes.Buffer
	root2 := n / 3
	for i := 1; i <= n; i++ {
		date := int64(1700000000 + 60*i)
		switch {
		case i%11 == 0:
			date -= 100000 // older than its parent
		case i == n*2/5:
			date = 5000000000 // 2128: past 32 bits (the graph stores 34)
		case i == n*2/5+1:
			date = 0
		}
		ref := "refs/heads/hist"
		if i == root2 {
			ref = "refs/heads/root2"
		}
		fmt.Fprintf(&b, "commit %s\nmark :%d\ncommitter T <t@example.invalid> %d +0000\ndata <<EOF\nc%d\nEOF\n", ref, i, date, i)
		switch {
		case i == 1 || i == root2:
		case i > 10 && i%17 == 0: // an octopus
			parents := map[int]bool{i - 1: true}
			for len(parents) < 3+rng.Intn(3) {
				parents[1+rng.Intn(i-2)] = true
			}
			fmt.Fprintf(&b, "from :%d\n", i-1)
			for p := range parents {
				if p != i-1 {
					fmt.Fprintf(&b, "merge :%d\n", p)
				}
			}
		case i > 5 && i%4 == 0:
			fmt.Fprintf(&b, "from :%d\nmerge :%d\n", i-1, 1+rng.Intn(i-2))
		case i > 5 && i%7 == 0:
			fmt.Fprintf(&b, "from :%d\n", 1+rng.Intn(i-2)) // a fork
		default:
			fmt.Fprintf(&b, "from :%d\n", i-1)
		}
		fmt.Fprintf(&b, "M 644 inline f%d\ndata <<EOF\n%d\nEOF\n\n", i%5, i)
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "get-mark :%d\n", i)
	}
	cmd := exec.Command("git", "fast-import", "--quiet", "--cat-blob-fd=1")
	cmd.Dir, cmd.Env, cmd.Stdin = dir, env, &b
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

// graphLayerSpec is one commit-graph write: the first upTo commits (closed
// under ancestry: parents come first), with generation data version gen.
type graphLayerSpec struct {
	upTo, gen int
}

// writeGraphs removes any commit-graph and writes the layers: one file for
// a single layer, else a split chain, one layer per write (no merging).
func writeGraphs(t testing.TB, dir string, env []string, ids []string, layers []graphLayerSpec, changedPaths bool) {
	t.Helper()
	info := filepath.Join(dir, ".git", "objects", "info")
	os.Remove(filepath.Join(info, "commit-graph"))
	os.RemoveAll(filepath.Join(info, "commit-graphs"))
	for _, l := range layers {
		args := []string{"-c", "commitGraph.generationVersion=" + strconv.Itoa(l.gen),
			"commit-graph", "write", "--stdin-commits", "--no-progress"}
		if len(layers) > 1 {
			args = append(args, "--split=no-merge")
		}
		if changedPaths {
			args = append(args, "--changed-paths")
		} else {
			args = append(args, "--no-changed-paths")
		}
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = dir, env
		cmd.Stdin = strings.NewReader(strings.Join(ids[:l.upTo], "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// graphChunks lists the chunk ids of each layer of g's files, from the
// chunk table.
func graphChunks(t testing.TB, info string) [][]string {
	t.Helper()
	files := []string{filepath.Join(info, "commit-graph")}
	if chain, err := os.ReadFile(filepath.Join(info, "commit-graphs", "commit-graph-chain")); err == nil {
		files = nil
		for _, h := range strings.Fields(string(chain)) {
			files = append(files, filepath.Join(info, "commit-graphs", "graph-"+h+".graph"))
		}
	}
	var out [][]string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i := 0; i < int(data[6]); i++ {
			ids = append(ids, string(data[8+12*i:12+12*i]))
		}
		out = append(out, ids)
	}
	return out
}

// compareGraph opens the commit-graph of the repository at gitDir with
// both readers and requires the same answer for every id from gitstate,
// go-git and the objects (graphIDs are the ids the graph must hold). It
// returns gitstate's graph.
func compareGraph(t *testing.T, gitDir string, ids []string, graphIDs map[string]bool, commits map[string]*object.Commit, v2 bool) *commitGraph {
	t.Helper()
	g, err := openCommitGraph(filepath.Join(gitDir, "objects", "info"))
	if err != nil {
		t.Fatalf("gitstate: open commit-graph: %v", err)
	}
	idx, err := cgraph.OpenChainOrFileIndex(osfs.New(gitDir))
	if err != nil {
		t.Fatalf("go-git: open commit-graph: %v", err)
	}
	defer idx.Close()
	if g.v2 != v2 || idx.HasGenerationV2() != v2 {
		t.Fatalf("corrected commit dates: gitstate %v, go-git %v, want %v", g.v2, idx.HasGenerationV2(), v2)
	}
	if g.total != idx.MaximumNumberOfHashes() || int(g.total) != len(graphIDs) {
		t.Fatalf("commits in the graph: gitstate %d, go-git %d, want %d", g.total, idx.MaximumNumberOfHashes(), len(graphIDs))
	}
	mine := gitstateViews(t, g, ids)
	if diff := cmp.Diff(goGitViews(t, idx, ids), mine); diff != "" {
		t.Fatalf("gitstate's commit-graph answers differ from go-git's (-go-git +gitstate):\n%s", diff)
	}
	want := objectViews(commits, ids, graphIDs, v2)
	if diff := cmp.Diff(want, mine, cmpopts.IgnoreFields(commitView{}, "Pos")); diff != "" {
		t.Fatalf("gitstate's commit-graph answers differ from the commit objects (-objects +gitstate):\n%s", diff)
	}
	return g
}

// compareAncestry asks IsAncestor (and the in-process walk alone) for
// pairs drawn so that about half are ancestors, against reachability from
// the objects, and asks git merge-base --is-ancestor for the first few.
func compareAncestry(t *testing.T, repo *Repo, g *commitGraph, ids []string, anc map[string]map[string]bool, pairs, viaGit int, seed int64) {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewSource(seed))
	yes := 0
	for i := 0; i < pairs; i++ {
		b := ids[rng.Intn(len(ids))]
		a := ids[rng.Intn(len(ids))]
		if rng.Intn(2) == 0 {
			var as []string
			for x := range anc[b] {
				as = append(as, x)
			}
			a = as[rng.Intn(len(as))]
		}
		want := anc[b][a]
		if want {
			yes++
		}
		if a != b {
			walked, err := repo.walkAncestor(g, a, b)
			if err != nil {
				t.Fatalf("walkAncestor(%s, %s): %v (every commit is in the graph or loose)", a[:8], b[:8], err)
			}
			if walked != want {
				t.Fatalf("walkAncestor(%s, %s) = %v, the objects say %v", a[:8], b[:8], walked, want)
			}
		}
		got, err := repo.IsAncestor(ctx, a, b)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("IsAncestor(%s, %s) = %v, the objects say %v", a[:8], b[:8], got, want)
		}
		if i < viaGit {
			byGit, err := repo.isAncestorGit(ctx, a, b)
			if err != nil {
				t.Fatal(err)
			}
			if byGit != want {
				t.Fatalf("git merge-base --is-ancestor %s %s: %v, the objects say %v", a[:8], b[:8], byGit, want)
			}
		}
	}
	if yes == 0 || yes == pairs {
		t.Fatalf("%d of %d pairs were ancestors: the sample tests one answer only", yes, pairs)
	}
}

// compareLoose requires looseParents to name, for every id, the parents
// go-git decodes from the same object; and so must the two readers
// measured against it (objfile_oracle_test.go), so that the benchmark
// compares equal work.
func compareLoose(t *testing.T, repo *Repo, ids []string, commits map[string]*object.Commit) {
	t.Helper()
	for _, id := range ids {
		got, err := repo.looseParents(id)
		if err != nil {
			t.Fatalf("looseParents(%s): %v", id, err)
		}
		var want []string
		for _, p := range commits[id].ParentHashes {
			want = append(want, p.String())
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("looseParents(%s) differs from go-git's decoding (-go-git +gitstate):\n%s", id, diff)
		}
		for name, read := range map[string]func(string) ([]string, error){
			"objfile": repo.looseParentsObjfile, "pooled": repo.looseParentsPooled,
		} {
			if got, err = read(id); err != nil {
				t.Fatalf("%s reader: %s: %v", name, id, err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("the %s reader differs from go-git's decoding on %s (-go-git +%s):\n%s", name, id, name, diff)
			}
		}
	}
}

// Every commit-graph shape git writes — one file or a split chain of
// three layers, generation data v1 or v2 or mixed along the chain, with
// and without changed-path Bloom filters, covering all commits or only
// the older ones — is read by gitstate exactly as go-git reads it and as
// the commit objects define it: lookups and positions, parents (octopus
// merges through the extra-edge list), topological levels, corrected
// commit dates (past 2^31-1 through the overflow chunk) and commit times;
// and ancestry answers match the objects' reachability and git's.
func TestCommitGraphOracle(t *testing.T) {
	r := gittest.New(t)
	n := 100
	ids := oracleHistory(t, r.Dir, r.Env(), n, 7)
	unpackAll(t, r)
	gitDir := filepath.Join(r.Dir, ".git")
	commits := goGitCommits(t, gitDir, ids)
	anc := ancestry(commits, ids)
	octopus := 0
	for _, c := range commits {
		if len(c.ParentHashes) > 2 {
			octopus++
		}
	}
	if octopus < 5 {
		t.Fatalf("%d octopus merges in the history, want several", octopus)
	}
	repo := &Repo{CommonDir: gitDir}
	compareLoose(t, repo, ids, commits)

	for _, tc := range []struct {
		name         string
		layers       []graphLayerSpec
		changedPaths bool
		v2           bool // every layer has generation data
	}{
		{"one file, v2", []graphLayerSpec{{n, 2}}, false, true},
		{"one file, v2, changed paths", []graphLayerSpec{{n, 2}}, true, true},
		{"one file, v1", []graphLayerSpec{{n, 1}}, false, false},
		{"split chain, v2", []graphLayerSpec{{30, 2}, {60, 2}, {n, 2}}, false, true},
		{"split chain, v2, changed paths", []graphLayerSpec{{30, 2}, {60, 2}, {n, 2}}, true, true},
		{"split chain, v1", []graphLayerSpec{{30, 1}, {60, 1}, {n, 1}}, true, false},
		{"split chain, v1 base under v2", []graphLayerSpec{{30, 1}, {60, 2}, {n, 2}}, false, false},
		{"split chain, v1 top over v2", []graphLayerSpec{{30, 2}, {60, 2}, {n, 1}}, false, false},
		{"one file of the older commits, newer ones loose", []graphLayerSpec{{70, 2}}, false, true},
		{"split chain of the older commits, newer ones loose", []graphLayerSpec{{25, 2}, {70, 2}}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeGraphs(t, r.Dir, r.Env(), ids, tc.layers, tc.changedPaths)
			info := filepath.Join(gitDir, "objects", "info")
			// The shape asked for is the shape written: the layers, and
			// the chunks that make the readers' paths differ.
			chunks := graphChunks(t, info)
			if len(chunks) != len(tc.layers) {
				t.Fatalf("%d layers written, want %d", len(chunks), len(tc.layers))
			}
			has := func(id string) bool {
				for _, l := range chunks {
					for _, c := range l {
						if c == id {
							return true
						}
					}
				}
				return false
			}
			last := tc.layers[len(tc.layers)-1].upTo
			if !has("EDGE") {
				t.Fatal("no layer has an extra-edge list: the octopus merges are not exercised")
			}
			if tc.v2 && last > n*2/5+1 && !has("GDO2") {
				t.Fatal("no layer has a generation data overflow chunk")
			}
			if has("BIDX") != tc.changedPaths {
				t.Fatalf("changed-path filters written: %v, want %v", has("BIDX"), tc.changedPaths)
			}
			graphIDs := map[string]bool{}
			for _, id := range ids[:last] {
				graphIDs[id] = true
			}
			g := compareGraph(t, gitDir, ids, graphIDs, commits, tc.v2)
			if len(g.layers) != len(tc.layers) {
				t.Fatalf("gitstate read %d layers, want %d", len(g.layers), len(tc.layers))
			}
			compareAncestry(t, &Repo{CommonDir: gitDir}, g, ids, anc, 100, 2, int64(len(tc.name)))
		})
	}
}

// The same comparison on a real history: a clone (sharing its objects
// through alternates, so it costs no copy) of the repository these tests
// run from, with a split commit-graph of three layers written over its
// commits in topological order; its commits are also written loose, by
// git unpack-objects into an empty repository, for the loose parsing.
// Skipped outside a full git clone.
func TestCommitGraphOracleRealClone(t *testing.T) {
	src, err := exec.Command("git", "rev-parse", "--path-format=absolute", "--git-common-dir").Output()
	if err != nil {
		t.Skipf("not run from a git clone (%v): no real history to read", err)
	}
	if out, _ := exec.Command("git", "rev-parse", "--is-shallow-repository").Output(); strings.TrimSpace(string(out)) == "true" {
		t.Skip("run from a shallow clone: its history is cut")
	}
	env := gittest.Env(t.TempDir())
	base := t.TempDir()
	git := func(dir string, stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = dir, env
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("git %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	clone, loose := filepath.Join(base, "clone"), filepath.Join(base, "loose.git")
	git(base, nil, "clone", "-q", "--shared", "--no-checkout", strings.TrimSpace(string(src)), clone)
	ids := strings.Fields(string(git(clone, nil, "rev-list", "--reverse", "--topo-order", "--all")))
	if len(ids) < 30 {
		t.Skipf("%d commits: too short a history to be worth reading", len(ids))
	}
	gitDir := filepath.Join(clone, ".git")
	git(base, nil, "init", "-q", "--bare", loose)
	pack := git(clone, []byte(strings.Join(ids, "\n")+"\n"), "pack-objects", "-q", "--stdout")
	git(loose, pack, "unpack-objects", "-q")
	// go-git decodes the loose copies: it follows alternates only inside
	// its own directory.
	commits := goGitCommits(t, loose, ids)
	compareLoose(t, &Repo{CommonDir: loose}, ids, commits)

	n := len(ids)
	writeGraphs(t, clone, env, ids, []graphLayerSpec{{n / 3, 2}, {n * 2 / 3, 2}, {n, 2}}, false)
	graphIDs := map[string]bool{}
	for _, id := range ids {
		graphIDs[id] = true
	}
	g := compareGraph(t, gitDir, ids, graphIDs, commits, true)
	if len(g.layers) != 3 {
		t.Fatalf("gitstate read %d layers, want 3", len(g.layers))
	}
	compareAncestry(t, &Repo{CommonDir: gitDir}, g, ids, ancestry(commits, ids), 200, 4, 1)
}
