package gitstate

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// This file reads git's commit-graph format (gitformat-commit-graph(5))
// directly from a read-only mapping of the file: a lookup is a binary
// search in the sorted id table, a parent is two integers in the commit
// data table. No library: go-git's reader cost a pread per field, and its
// package initialisers alone added ~10 ms to every hook's start-up.

// commitGraph is a commit-graph file, or a chain of split files, mapped
// into memory. Positions are global across the chain, base layer first, as
// the format's parent fields are.
type commitGraph struct {
	hashLen int
	layers  []graphLayer // base first
	total   uint32
	// v2: every layer has corrected commit dates (generation number v2,
	// the GDA2 chunk), which git writes by default since 2.31 and uses
	// before topological levels.
	v2 bool
}

// graphLayer is one commit-graph file.
type graphLayer struct {
	first  uint32 // global position of the layer's first commit
	n      uint32
	fanout []byte // 256 big-endian uint32: commits whose first byte is <= i
	oids   []byte // n sorted ids
	cdat   []byte // n × (tree id, parent 1, parent 2, level and date)
	edges  []byte // extra parents of octopus merges
	gda2   []byte // n × corrected commit date offset (or GDO2 index); nil without
	gdo2   []byte // the offsets too large for 31 bits
}

const (
	graphNoParent    = 0x70000000
	graphEdgeFlag    = 0x80000000 // parent 2 is an index into the extra-edges list
	graphLastEdge    = 0x80000000 // the last entry of an octopus merge's list
	graphLevelShift  = 2          // the topological level is the top 30 bits
	graphLevelMax    = 1<<30 - 1  // levels at least this high are stored as this
	graphGDAOverflow = 0x80000000 // the offset is an index into GDO2
)

// errGraphCorrupt says the commit-graph contradicts itself; callers fall
// back to git, which also ignores a graph it cannot trust.
var errGraphCorrupt = errors.New("commit-graph is damaged")

// openCommitGraph maps the commit-graph file in info (objects/info), or the
// chain of split graph files when there is no single file. It returns
// fs.ErrNotExist (wrapped) when the repository has none. The mappings are
// released when the commitGraph is garbage.
func openCommitGraph(info string) (*commitGraph, error) {
	var files []string
	if _, err := os.Stat(filepath.Join(info, "commit-graph")); err == nil {
		files = []string{filepath.Join(info, "commit-graph")}
	} else {
		chain, err := os.ReadFile(filepath.Join(info, "commit-graphs", "commit-graph-chain"))
		if err != nil {
			return nil, err
		}
		for _, h := range strings.Fields(string(chain)) {
			if !isHexID(h) {
				return nil, fmt.Errorf("commit-graph-chain: %q: %w", h, errGraphCorrupt)
			}
			files = append(files, filepath.Join(info, "commit-graphs", "graph-"+h+".graph"))
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("commit-graph-chain is empty: %w", errGraphCorrupt)
		}
	}
	g := &commitGraph{v2: true}
	var maps [][]byte
	release := func(maps [][]byte) {
		for _, m := range maps {
			unix.Munmap(m)
		}
	}
	for _, path := range files {
		data, err := mapFile(path)
		if err != nil {
			release(maps)
			return nil, err
		}
		maps = append(maps, data)
		layer, hashLen, err := parseGraphLayer(data)
		if err != nil {
			release(maps)
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if g.hashLen != 0 && hashLen != g.hashLen {
			release(maps)
			return nil, fmt.Errorf("%s: hash length differs from its base: %w", path, errGraphCorrupt)
		}
		g.hashLen = hashLen
		layer.first = g.total
		if uint64(g.total)+uint64(layer.n) >= graphNoParent {
			release(maps)
			return nil, fmt.Errorf("%s: too many commits: %w", path, errGraphCorrupt)
		}
		g.total += layer.n
		g.v2 = g.v2 && layer.gda2 != nil
		g.layers = append(g.layers, layer)
	}
	runtime.AddCleanup(g, release, maps)
	return g, nil
}

// mapFile maps a whole file read-only. git replaces graph files by rename,
// never in place, so the mapping stays what it was when opened.
func mapFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < 8 || fi.Size() > 1<<40 {
		return nil, fmt.Errorf("%s: size %d: %w", path, fi.Size(), errGraphCorrupt)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	return data, nil
}

// parseGraphLayer checks the header and chunk table of one graph file and
// slices out the chunks a walk needs, each checked against its length, so
// that later reads only need their index checked against n.
func parseGraphLayer(data []byte) (graphLayer, int, error) {
	var l graphLayer
	if len(data) < 8 || string(data[:4]) != "CGPH" || data[4] != 1 {
		return l, 0, fmt.Errorf("not a version 1 commit-graph: %w", errGraphCorrupt)
	}
	var hashLen int
	switch data[5] {
	case 1:
		hashLen = 20
	case 2:
		hashLen = 32
	default:
		return l, 0, fmt.Errorf("hash version %d: %w", data[5], errGraphCorrupt)
	}
	chunks := int(data[6])
	table := data[8:]
	if len(table) < (chunks+1)*12 {
		return l, 0, fmt.Errorf("chunk table: %w", errGraphCorrupt)
	}
	chunk := map[string][]byte{}
	for i := 0; i < chunks; i++ {
		e := table[i*12:]
		start := binary.BigEndian.Uint64(e[4:12])
		end := binary.BigEndian.Uint64(table[(i+1)*12+4:])
		if start > end || end > uint64(len(data)) {
			return l, 0, fmt.Errorf("chunk %q out of bounds: %w", e[:4], errGraphCorrupt)
		}
		chunk[string(e[:4])] = data[start:end]
	}
	l.fanout, l.oids, l.cdat, l.edges = chunk["OIDF"], chunk["OIDL"], chunk["CDAT"], chunk["EDGE"]
	if len(l.fanout) != 256*4 {
		return l, 0, fmt.Errorf("fanout: %w", errGraphCorrupt)
	}
	l.n = binary.BigEndian.Uint32(l.fanout[255*4:])
	if uint64(len(l.oids)) != uint64(l.n)*uint64(hashLen) || uint64(len(l.cdat)) != uint64(l.n)*uint64(hashLen+16) {
		return l, 0, fmt.Errorf("id or commit data table length: %w", errGraphCorrupt)
	}
	if gda2, ok := chunk["GDA2"]; ok {
		if uint64(len(gda2)) != uint64(l.n)*4 || len(chunk["GDO2"])%8 != 0 {
			return l, 0, fmt.Errorf("generation data table length: %w", errGraphCorrupt)
		}
		l.gda2, l.gdo2 = gda2, chunk["GDO2"]
	}
	return l, hashLen, nil
}

// lookup returns the global position of the commit with id, if the graph
// has it.
func (g *commitGraph) lookup(id []byte) (uint32, bool) {
	if len(id) != g.hashLen {
		return 0, false
	}
	for i := len(g.layers) - 1; i >= 0; i-- {
		l := &g.layers[i]
		lo := uint32(0)
		if id[0] > 0 {
			lo = binary.BigEndian.Uint32(l.fanout[(int(id[0])-1)*4:])
		}
		hi := binary.BigEndian.Uint32(l.fanout[int(id[0])*4:])
		if hi > l.n || lo > hi {
			return 0, false
		}
		for lo < hi {
			mid := lo + (hi-lo)/2
			switch c := bytes.Compare(l.oids[int(mid)*g.hashLen:int(mid+1)*g.hashLen], id); {
			case c == 0:
				return l.first + mid, true
			case c < 0:
				lo = mid + 1
			default:
				hi = mid
			}
		}
	}
	return 0, false
}

// entry returns the layer holding global position pos and the commit's
// data record.
func (g *commitGraph) entry(pos uint32) (*graphLayer, []byte, error) {
	for i := len(g.layers) - 1; i >= 0; i-- {
		l := &g.layers[i]
		if pos >= l.first {
			local := pos - l.first
			if local >= l.n {
				break
			}
			w := g.hashLen + 16
			return l, l.cdat[int(local)*w : int(local+1)*w], nil
		}
	}
	return nil, nil, fmt.Errorf("position %d: %w", pos, errGraphCorrupt)
}

// generation returns the commit's two generation numbers: its
// topological level (1 for a root, one more than its highest parent,
// capped at graphLevelMax; 0 when the writer did not compute it) and, when
// g.v2, its corrected commit date (its date, raised to one more than its
// parents' when they are later). Both grow strictly from parent to child.
func (g *commitGraph) generation(pos uint32) (level uint32, date uint64, err error) {
	l, rec, err := g.entry(pos)
	if err != nil {
		return 0, 0, err
	}
	w := binary.BigEndian.Uint32(rec[g.hashLen+8:])
	level = w >> graphLevelShift
	if !g.v2 {
		return level, 0, nil
	}
	date = uint64(w&3)<<32 | uint64(binary.BigEndian.Uint32(rec[g.hashLen+12:]))
	local := pos - l.first
	off := binary.BigEndian.Uint32(l.gda2[int(local)*4:])
	if off&graphGDAOverflow == 0 {
		return level, date + uint64(off), nil
	}
	i := int(off &^ graphGDAOverflow)
	if (i+1)*8 > len(l.gdo2) {
		return 0, 0, fmt.Errorf("generation overflow %d: %w", i, errGraphCorrupt)
	}
	return level, date + binary.BigEndian.Uint64(l.gdo2[i*8:]), nil
}

// parents appends the commit's parents' global positions to buf.
func (g *commitGraph) parents(pos uint32, buf []uint32) ([]uint32, error) {
	l, rec, err := g.entry(pos)
	if err != nil {
		return buf, err
	}
	p1 := binary.BigEndian.Uint32(rec[g.hashLen:])
	p2 := binary.BigEndian.Uint32(rec[g.hashLen+4:])
	if p1 == graphNoParent {
		return buf, nil
	}
	if p1 >= g.total {
		return buf, fmt.Errorf("parent %d: %w", p1, errGraphCorrupt)
	}
	buf = append(buf, p1)
	switch {
	case p2 == graphNoParent:
		return buf, nil
	case p2&graphEdgeFlag == 0:
		if p2 >= g.total {
			return buf, fmt.Errorf("parent %d: %w", p2, errGraphCorrupt)
		}
		return append(buf, p2), nil
	}
	for i := int(p2 &^ graphEdgeFlag); ; i++ {
		if (i+1)*4 > len(l.edges) {
			return buf, fmt.Errorf("extra edge %d: %w", i, errGraphCorrupt)
		}
		e := binary.BigEndian.Uint32(l.edges[i*4:])
		p := e &^ graphLastEdge
		if p >= g.total {
			return buf, fmt.Errorf("parent %d: %w", p, errGraphCorrupt)
		}
		buf = append(buf, p)
		if e&graphLastEdge != 0 {
			return buf, nil
		}
	}
}

// errNotLoose says a commit outside the graph is not a loose object (it is
// packed, or in an alternate); the caller asks git.
var errNotLoose = errors.New("commit is not a loose object")

// looseWalkMax bounds the loose commits one walk reads (~20 µs each): past
// it, git (one process, ~10 ms) is the cheaper way to the answer. Commits
// beyond the commit-graph are normally few: git's maintenance writes the
// graph, and gc packs loose objects.
var looseWalkMax = 500

// errLooseWalkTooLong is returned by walkAncestor past looseWalkMax.
var errLooseWalkTooLong = errors.New("too many loose commits for an in-process walk")

// looseParents reads a loose commit object's parent ids. Commits made since
// the last commit-graph write (every job's own work) are usually loose.
func (r *Repo) looseParents(id string) ([]string, error) {
	f, err := os.Open(filepath.Join(r.CommonDir, "objects", id[:2], id[2:]))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotLoose
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := zlib.NewReader(bufio.NewReaderSize(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", id, err)
	}
	br := bufio.NewReaderSize(z, 4096)
	header, err := br.ReadString(0)
	if err != nil || !strings.HasPrefix(header, "commit ") {
		return nil, fmt.Errorf("object %s: not a commit", id)
	}
	return headerParents(id, br)
}

// headerParents reads a commit's header lines from br (its content, after
// the object header) up to the blank line that ends them, and returns the
// ids of its parent lines, each checked to be a full hex id.
func headerParents(id string, br *bufio.Reader) ([]string, error) {
	var parents []string
	for {
		line, err := br.ReadString('\n')
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return nil, fmt.Errorf("object %s: %w", id, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return parents, nil // the end of the headers
		}
		if p, ok := strings.CutPrefix(line, "parent "); ok {
			if !isHexID(p) {
				return nil, fmt.Errorf("object %s: parent %q", id, p)
			}
			parents = append(parents, p)
		}
	}
}

// walkAncestor searches b's ancestry for a over the commit-graph, reading
// commits newer than the graph as loose objects. It never goes below a's
// generation: generations grow from parent to child, so a commit whose
// generation is not above a's cannot reach a — when b's is not, the answer
// is no without a walk, as git's own. A commit-graph is closed under ancestry, so when a is not
// in the graph no graph commit can reach it either. It returns errNotLoose
// when it meets a commit it can read neither from the graph nor loose.
func (r *Repo) walkAncestor(g *commitGraph, a, b string) (bool, error) {
	aid, err := hex.DecodeString(a)
	if err != nil {
		return false, fmt.Errorf("commit %q: %w", a, err)
	}
	aPos, aInGraph := g.lookup(aid)
	var levelA uint32 // 0: prune nothing by level
	var dateA uint64
	if aInGraph {
		if levelA, dateA, err = g.generation(aPos); err != nil {
			return false, err
		}
	}
	// below reports whether a graph commit other than a cannot reach a: its
	// generation is not above a's (strictly growing along every path; a
	// capped level proves nothing when a's is capped too).
	below := func(level uint32, date uint64) bool {
		if g.v2 && date <= dateA {
			return true
		}
		return levelA != 0 && level != 0 && (level < levelA || level == levelA && levelA < graphLevelMax)
	}
	seen := make([]uint64, (g.total+63)/64)
	var graphStack []uint32
	// push adds a graph commit unless it was seen or cannot reach a.
	push := func(p uint32) (bool, error) {
		if p == aPos && aInGraph {
			return true, nil
		}
		if seen[p/64]&(1<<(p%64)) != 0 {
			return false, nil
		}
		seen[p/64] |= 1 << (p % 64)
		if !aInGraph {
			return false, nil
		}
		level, date, err := g.generation(p)
		if err != nil {
			return false, err
		}
		if below(level, date) {
			return false, nil
		}
		graphStack = append(graphStack, p)
		return false, nil
	}
	// Commits outside the graph first: they are the newest.
	looseSeen := map[string]bool{b: true}
	looseRead := 0
	looseStack := []string{b}
	for len(looseStack) > 0 {
		id := looseStack[len(looseStack)-1]
		looseStack = looseStack[:len(looseStack)-1]
		if id == a {
			return true, nil
		}
		bid, err := hex.DecodeString(id)
		if err != nil {
			return false, fmt.Errorf("commit %q: %w", id, err)
		}
		if pos, ok := g.lookup(bid); ok {
			if found, err := push(pos); found || err != nil {
				return found, err
			}
			continue
		}
		if looseRead++; looseRead > looseWalkMax {
			return false, errLooseWalkTooLong
		}
		parents, err := r.looseParents(id)
		if err != nil {
			return false, err
		}
		for _, p := range parents {
			if !looseSeen[p] {
				looseSeen[p] = true
				looseStack = append(looseStack, p)
			}
		}
	}
	var buf []uint32
	for len(graphStack) > 0 {
		n := graphStack[len(graphStack)-1]
		graphStack = graphStack[:len(graphStack)-1]
		if buf, err = g.parents(n, buf[:0]); err != nil {
			return false, err
		}
		for _, p := range buf {
			if found, err := push(p); found || err != nil {
				return found, err
			}
		}
	}
	return false, nil
}
