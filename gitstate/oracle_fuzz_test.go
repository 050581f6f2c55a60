package gitstate

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	cgraph "github.com/go-git/go-git/v5/plumbing/format/commitgraph/v2"
	"github.com/go-git/go-git/v5/plumbing/format/objfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// FuzzCommitGraphOracle feeds commit-graph files — one file (top empty)
// or a chain of two layers — to gitstate's reader and go-git's. gitstate
// must never panic or loop, whatever the bytes. Where both readers accept
// the files and both answer a question, the answers must be equal:
// positions of ids, parents, topological levels, corrected commit dates,
// commit times.
//
// The seeds are graphs real git writes for a small history with octopus
// merges and overflowing generation data: one file with generation data
// v2 and changed-path filters, one with v1, and a two-layer split chain.
//
// Where the readers legitimately differ (no comparison is made):
//   - go-git reads the chunk table until a zero id and ignores the chunk
//     count in the header; gitstate reads the count's entries. Files whose
//     table is not "count entries, then the zero terminator" are compared
//     on nothing but the absence of a panic.
//   - go-git takes a chunk offset of 0 to mean "no such chunk".
//   - go-git reads every field at its chunk's offset without checking the
//     chunk's length (a record past the end of a chunk is read from the next
//     one); gitstate checks lengths when it opens a file and answers
//     errGraphCorrupt. An answer gitstate gives was read inside its chunk,
//     from the same offset go-git reads.
//   - Lookups in a file whose fanout table is not non-decreasing: gitstate
//     then answers "not in the graph" for every layer, go-git searches on.
//   - A missing overflow chunk (GDO2): go-git reads the overflow at offset
//     0 + index; gitstate answers errGraphCorrupt.
//   - A parent field with the top bit set outside an octopus: go-git masks
//     the bit, gitstate reports the position out of range.
//   - Corrected dates of a lower layer when the top layer has none: go-git
//     reports them, gitstate (as git) uses none; compared only when the
//     whole chain has them.
//   - SHA-256 graphs (hash version 2): gitstate reads them; go-git, built
//     for SHA-1, refuses them.
//
// A go-git panic counts as go-git refusing the input: it is not the code
// under test.
func FuzzCommitGraphOracle(f *testing.F) {
	r := gittest.New(f)
	ids := oracleHistory(f, r.Dir, r.Env(), 24, 3)
	info := filepath.Join(r.Dir, ".git", "objects", "info")
	read := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	for _, gen := range []graphLayerSpec{{24, 2}, {24, 1}} {
		writeGraphs(f, r.Dir, r.Env(), ids, []graphLayerSpec{gen}, gen.gen == 2)
		f.Add(read(filepath.Join(info, "commit-graph")), []byte(nil))
	}
	writeGraphs(f, r.Dir, r.Env(), ids, []graphLayerSpec{{12, 2}, {24, 2}}, false)
	chain := strings.Fields(string(read(filepath.Join(info, "commit-graphs", "commit-graph-chain"))))
	if len(chain) != 2 {
		f.Fatalf("split write gave %d layers, want 2", len(chain))
	}
	layer := func(i int) []byte {
		return read(filepath.Join(info, "commit-graphs", "graph-"+chain[i]+".graph"))
	}
	f.Add(layer(0), layer(1))
	f.Add([]byte("CGPH\x01\x01\x00\x00"), []byte(nil))
	f.Add([]byte{}, []byte(nil))

	// One directory per fuzzing process, emptied for each input (a
	// process runs one input at a time).
	dir := f.TempDir()
	info = filepath.Join(dir, "objects", "info")
	f.Fuzz(func(t *testing.T, base, top []byte) {
		if err := os.RemoveAll(info); err != nil {
			t.Fatal(err)
		}
		files := [][]byte{base}
		if len(top) > 0 {
			files = append(files, top)
		}
		writeGraphFiles(t, info, files)

		g, err := openCommitGraph(info)
		if err != nil {
			return // refused: all that is asked is no panic
		}
		// Every answer gitstate can be asked, asked: none may panic.
		mine := make([]graphAnswer, g.total)
		for pos := uint32(0); pos < g.total; pos++ {
			mine[pos] = gitstateAnswer(g, pos)
		}
		var oids [][]byte
		for _, l := range g.layers {
			for i := 0; i < int(l.n); i++ {
				oids = append(oids, l.oids[i*g.hashLen:(i+1)*g.hashLen])
			}
		}
		found := make([]int64, len(oids))
		for i, id := range oids {
			found[i] = -1
			if pos, ok := g.lookup(id); ok {
				found[i] = int64(pos)
			}
		}
		// Walks between some of the ids (none is loose: a walk that
		// leaves the graph ends with errNotLoose).
		repo := &Repo{CommonDir: dir}
		for i := 0; i+1 < len(oids) && i < 16; i += 2 {
			repo.walkAncestor(g, hex.EncodeToString(oids[i]), hex.EncodeToString(oids[i+1]))
		}

		if !comparableGraphFiles(files) {
			return
		}
		idx, err := openGoGitGraph(dir)
		if err != nil {
			return
		}
		defer idx.Close()
		if got := idx.MaximumNumberOfHashes(); got != g.total {
			t.Fatalf("commits in the graph: gitstate %d, go-git %d", g.total, got)
		}
		v2 := g.v2 && idx.HasGenerationV2()
		for pos := uint32(0); pos < g.total; pos++ {
			theirs, ok := goGitAnswer(idx, pos)
			if !ok || mine[pos].err != nil {
				continue
			}
			want := mine[pos]
			if !v2 {
				want.Corrected, theirs.Corrected = 0, 0
			}
			if diff := cmp.Diff(theirs, want, cmp.AllowUnexported(graphAnswer{})); diff != "" {
				t.Fatalf("position %d: gitstate and go-git differ (-go-git +gitstate):\n%s", pos, diff)
			}
		}
		if !saneFanouts(g) {
			return
		}
		for i, id := range oids {
			var h plumbing.Hash
			copy(h[:], id)
			theirs, err := goGitLookup(idx, h)
			if err != nil {
				continue
			}
			if theirs != found[i] {
				t.Fatalf("lookup %x: gitstate %d, go-git %d", id, found[i], theirs)
			}
		}
	})
}

// graphAnswer is one reader's answer for one position; err is gitstate's
// refusal (errGraphCorrupt), if any.
type graphAnswer struct {
	Parents   []uint32
	Level     uint64
	Corrected uint64
	Time      int64
	err       error
}

func gitstateAnswer(g *commitGraph, pos uint32) graphAnswer {
	var a graphAnswer
	if a.Parents, a.err = g.parents(pos, nil); a.err != nil {
		return a
	}
	level, date, err := g.generation(pos)
	if err != nil {
		a.err = err
		return a
	}
	a.Level, a.Corrected = uint64(level), date
	_, rec, err := g.entry(pos)
	if err != nil {
		a.err = err
		return a
	}
	a.Time = graphCommitTime(rec[g.hashLen+8:])
	return a
}

// goGitAnswer is go-git's answer; false when it refuses (or panics).
func goGitAnswer(idx cgraph.Index, pos uint32) (a graphAnswer, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	d, err := idx.GetCommitDataByIndex(pos)
	if err != nil {
		return a, false
	}
	return graphAnswer{Parents: d.ParentIndexes, Level: d.Generation, Corrected: d.GenerationV2, Time: d.When.Unix()}, true
}

func goGitLookup(idx cgraph.Index, h plumbing.Hash) (pos int64, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("go-git panicked: %v", p)
		}
	}()
	p, err := idx.GetIndexByHash(h)
	if err == plumbing.ErrObjectNotFound {
		return -1, nil
	}
	return int64(p), err
}

func openGoGitGraph(dir string) (idx cgraph.Index, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("go-git panicked: %v", p)
		}
	}()
	return cgraph.OpenChainOrFileIndex(osfs.New(dir))
}

// writeGraphFiles lays files out as git does: one file as
// objects/info/commit-graph, more as a chain under commit-graphs/.
func writeGraphFiles(t *testing.T, info string, files [][]byte) {
	t.Helper()
	if len(files) == 1 {
		if err := os.MkdirAll(info, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(info, "commit-graph"), files[0], 0o444); err != nil {
			t.Fatal(err)
		}
		return
	}
	dir := filepath.Join(info, "commit-graphs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var chain strings.Builder
	for i, b := range files {
		name := fmt.Sprintf("%040x", i+1)
		if err := os.WriteFile(filepath.Join(dir, "graph-"+name+".graph"), b, 0o444); err != nil {
			t.Fatal(err)
		}
		chain.WriteString(name + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "commit-graph-chain"), []byte(chain.String()), 0o444); err != nil {
		t.Fatal(err)
	}
}

// comparableGraphFiles reports whether both readers see the same chunks
// in every file: the table holds exactly the header's count of non-zero
// ids, then the zero terminator, and no chunk starts inside the header or
// the table.
func comparableGraphFiles(files [][]byte) bool {
	for _, b := range files {
		if len(b) < 8 {
			return false
		}
		n := int(b[6])
		end := 8 + 12*(n+1)
		if len(b) < end || binary.BigEndian.Uint32(b[8+12*n:]) != 0 {
			return false
		}
		for i := 0; i < n; i++ {
			e := b[8+12*i:]
			if binary.BigEndian.Uint32(e) == 0 || binary.BigEndian.Uint64(e[4:]) < uint64(end) {
				return false
			}
		}
	}
	return true
}

// saneFanouts reports whether every layer's fanout table is
// non-decreasing (it ends at the layer's count by construction).
func saneFanouts(g *commitGraph) bool {
	for _, l := range g.layers {
		prev := uint32(0)
		for i := 0; i < 256; i++ {
			v := binary.BigEndian.Uint32(l.fanout[i*4:])
			if v < prev {
				return false
			}
			prev = v
		}
	}
	return true
}

// FuzzLooseCommitOracle feeds commit objects (the inflated bytes: header
// "commit <size>\x00", then the body) to gitstate's loose commit parsing
// and to go-git's (objfile, then object.Commit's decoder). gitstate must
// never panic, every parent it returns is a full lowercase id, and where
// both accept the object they name the same parents.
//
// Where they legitimately differ (no comparison is made):
//   - go-git trims white space around each header line: it ends the
//     headers at a line of only white space, and takes " parent <id>" or
//     a bare "parent" (the zero id) as a parent line. gitstate (as git)
//     takes only lines that begin "parent " and ends the headers at an
//     empty line.
//   - A 64-digit (SHA-256) parent: gitstate returns it whole; go-git keeps
//     the first 20 bytes.
//
// Both accept a "parent" line anywhere among the headers; git reads
// parents only directly after the tree line (parse_commit_buffer), so an
// object with a parent line elsewhere — which git never writes and fsck
// rejects — has parents to these readers that git does not see.
func FuzzLooseCommitOracle(f *testing.F) {
	const (
		tree = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
		p1   = "parent 1111111111111111111111111111111111111111\n"
		p2   = "parent 2222222222222222222222222222222222222222\n"
		p3   = "parent 3333333333333333333333333333333333333333\n"
		who  = "author A <a@example.invalid> 1700000000 +0000\ncommitter C <c@example.invalid> 1700000000 +0000\n"
	)
	for _, body := range []string{
		tree + who + "\nroot\n",
		tree + p1 + who + "\none parent\n",
		tree + p1 + p2 + who + "\nmerge\n",
		tree + p1 + p2 + p3 + "parent 4444444444444444444444444444444444444444\n" + who + "\noctopus\n",
		tree + p1 + who + "encoding ISO-8859-1\n\nencoded\n",
		tree + p1 + who + "gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----\n\nsigned\n",
		tree + p1 + p2 + who + "mergetag object 2222222222222222222222222222222222222222\n type commit\n tag v1\n tagger T <t@example.invalid> 1700000000 +0000\n \n v1\n\nmerge of a tag\n",
		tree + p1 + who + "x-extra first\n continued\n\nextra header\n",
		tree + p1 + who + "\nparent 5555555555555555555555555555555555555555\n(in the message, not a parent)\n",
		tree + p1 + who, // no message, no blank line
		tree + "parent 1111111111111111111111111111111111111111\r\n" + who + "\ncarriage return\n",
		tree + " " + p1 + who + "\nindented\n",
		tree + "parent\n" + who + "\nbare parent\n",
		tree + "parent 1111111111111111111111111111111111111111111111111111111111111111\n" + who + "\nsha256 length\n",
		tree + "parent 111111111111111111111111111111111111111G\n" + who + "\nnot hex\n",
		tree + "PARENT 1111111111111111111111111111111111111111\n" + who + "\nupper case\n",
		tree + who + p1 + "\nparent after the committer\n",
	} {
		f.Add([]byte(fmt.Sprintf("commit %d\x00%s", len(body), body)))
	}
	f.Add([]byte("blob 3\x00abc"))
	f.Add([]byte("commit 0\x00"))
	f.Add([]byte("commit"))
	f.Add([]byte{})

	dir := f.TempDir() // one per fuzzing process, which runs one input at a time
	id := "ab" + strings.Repeat("cd", 19)
	path := filepath.Join(dir, "objects", id[:2], id[2:])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, obj []byte) {
		var z bytes.Buffer
		w := zlib.NewWriter(&z)
		w.Write(obj)
		w.Close()
		if err := os.WriteFile(path, z.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		mine, err := (&Repo{CommonDir: dir}).looseParents(id)
		if err != nil {
			return
		}
		for _, p := range mine {
			if !isHexID(p) {
				t.Fatalf("looseParents accepted parent %q", p)
			}
		}
		theirs, ok := goGitParents(z.Bytes())
		if !ok || looseReadersDiffer(obj) {
			return
		}
		if diff := cmp.Diff(theirs, mine); diff != "" {
			t.Fatalf("gitstate and go-git name different parents (-go-git +gitstate):\n%s\nobject: %q", diff, obj)
		}
	})
}

// goGitParents decodes a compressed loose object as go-git's loose object
// storage does; false when go-git refuses it (or panics).
func goGitParents(compressed []byte) (parents []string, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	r, err := objfile.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, false
	}
	defer r.Close()
	typ, size, err := r.Header()
	if err != nil || typ != plumbing.CommitObject {
		return nil, false
	}
	o := &plumbing.MemoryObject{}
	o.SetType(typ)
	o.SetSize(size)
	if _, err := io.Copy(o, r); err != nil {
		return nil, false
	}
	var c object.Commit
	if err := c.Decode(o); err != nil {
		return nil, false
	}
	for _, p := range c.ParentHashes {
		parents = append(parents, p.String())
	}
	return parents, true
}

// looseReadersDiffer reports whether obj has a header line on which the
// two readers legitimately part (see FuzzLooseCommitOracle).
func looseReadersDiffer(obj []byte) bool {
	_, body, ok := bytes.Cut(obj, []byte{0})
	if !ok {
		return true
	}
	for _, line := range strings.SplitAfter(string(body), "\n") {
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return false // the end of the headers for both
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" {
			return true
		}
		word, value, _ := strings.Cut(trimmed, " ")
		mine := strings.HasPrefix(line, "parent ")
		if mine != (word == "parent") || mine && len(value) == 64 {
			return true
		}
	}
	return false
}
