package gitstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	commitgraphfmt "github.com/go-git/go-git/v5/plumbing/format/commitgraph/v2"
	"github.com/go-git/go-git/v5/plumbing/object/commitgraph"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// ResolveCommit returns the commit id rev names, or an error naming rev when
// it names no commit. Merges resolve both sides first: on git 2.39,
// merge-tree exits 1 for an unknown ref just as it does for a conflict.
func (r *Repo) ResolveCommit(ctx context.Context, rev string) (string, error) {
	// A branch or remote-tracking ref is read from the files: no process.
	// Branches point at commits (git refuses anything else under
	// refs/heads); anything unusual goes to git.
	if strings.HasPrefix(rev, "refs/heads/") || strings.HasPrefix(rev, "refs/remotes/") {
		if id, ok, err := r.readRef(rev); err == nil && ok {
			return id, nil
		}
	}
	out, err := Git(ctx, r.CommonDir, "rev-parse", "--verify", "--quiet", "--end-of-options", rev+"^{commit}")
	if err != nil {
		var ge *GitError
		if errors.As(err, &ge) && ge.ExitCode == 1 {
			return "", fmt.Errorf("%s does not name a commit", strings.TrimPrefix(rev, "refs/heads/"))
		}
		return "", err
	}
	return out, nil
}

// IsAncestor reports whether commit a is an ancestor of commit b (a commit
// is its own ancestor); a and b are full commit ids (ResolveCommit).
//
// With a commit-graph file it walks in process from b, never below a's
// generation number: a commit whose generation is lower than a's cannot
// have a as an ancestor, so a "no" costs the commits between the two
// generations, not the whole history (go-git's Commit.IsAncestor walks
// everything on a "no"). Commits newer than the graph are read as objects.
// Without a commit-graph it asks git merge-base --is-ancestor.
func (r *Repo) IsAncestor(ctx context.Context, a, b string) (bool, error) {
	if a == b {
		return true, nil
	}
	if nodes := r.graphNodes(); nodes != nil {
		ok, err := walkAncestor(nodes, plumbing.NewHash(a), plumbing.NewHash(b), walkGenerationsMax)
		if err == nil {
			return ok, nil
		}
		// Too far apart, or a damaged graph: git knows best.
	}
	return r.isAncestorGit(ctx, a, b)
}

// Relation is how a branch stands to a target.
type Relation int

const (
	// Contained: the branch is an ancestor of the target (or equal).
	Contained Relation = iota
	// Behind: the target is an ancestor of the branch: a fast-forward.
	Behind
	// Diverged: neither contains the other: a real merge.
	Diverged
)

// Relate tells how branch commit b stands to target commit t: in process
// over the commit-graph when there is one, else with a single git
// merge-base (the merge base is b when b is contained, t when the target is
// behind).
func (r *Repo) Relate(ctx context.Context, t, b string) (Relation, error) {
	if t == b {
		return Contained, nil
	}
	if r.graphNodes() == nil {
		base, err := Git(ctx, r.CommonDir, "merge-base", "--end-of-options", t, b)
		var ge *GitError
		switch {
		case errors.As(err, &ge) && ge.ExitCode == 1:
			return Diverged, nil // no common ancestor at all
		case err != nil:
			return 0, err
		case base == b:
			return Contained, nil
		case base == t:
			return Behind, nil
		}
		return Diverged, nil
	}
	if ok, err := r.IsAncestor(ctx, b, t); err != nil || ok {
		return Contained, err
	}
	if ok, err := r.IsAncestor(ctx, t, b); err != nil || ok {
		return Behind, err
	}
	return Diverged, nil
}

// isAncestorGit asks git merge-base --is-ancestor.
func (r *Repo) isAncestorGit(ctx context.Context, a, b string) (bool, error) {
	_, err := Git(ctx, r.CommonDir, "merge-base", "--is-ancestor", a, b)
	if err == nil {
		return true, nil
	}
	var ge *GitError
	if errors.As(err, &ge) && ge.ExitCode == 1 {
		return false, nil
	}
	return false, err
}

// graphNodes opens, once per Repo, the commit-graph of the repository and
// the object storage behind it; nil when there is no commit-graph. go-git's
// storage is opened on the common dir directly: git.Open refuses
// repositories with extensions.worktreeConfig, the storage does not care.
func (r *Repo) graphNodes() commitgraph.CommitNodeIndex {
	r.graphOnce.Do(func() {
		idx, err := openCommitGraph(filepath.Join(r.CommonDir, "objects", "info"))
		if err != nil {
			return
		}
		st := filesystem.NewStorage(osfs.New(r.CommonDir), cache.NewObjectLRUDefault())
		r.graph = commitgraph.NewGraphCommitNodeIndex(idx, st)
	})
	return r.graph
}

// openCommitGraph reads the commit-graph file, or the chain of split graph
// files, into memory: go-git reads every field of every commit with its own
// pread otherwise, which made a long walk cost ~15 µs a commit.
func openCommitGraph(info string) (commitgraphfmt.Index, error) {
	if data, err := os.ReadFile(filepath.Join(info, "commit-graph")); err == nil {
		return commitgraphfmt.OpenFileIndex(memFile{bytes.NewReader(data)})
	}
	chainFile, err := os.Open(filepath.Join(info, "commit-graphs", "commit-graph-chain"))
	if err != nil {
		return nil, err
	}
	chain, err := commitgraphfmt.OpenChainFile(chainFile)
	chainFile.Close()
	if err != nil {
		return nil, err
	}
	var idx commitgraphfmt.Index
	for _, h := range chain {
		data, err := os.ReadFile(filepath.Join(info, "commit-graphs", "graph-"+h+".graph"))
		if err != nil {
			return nil, err
		}
		if idx, err = commitgraphfmt.OpenFileIndexWithParent(memFile{bytes.NewReader(data)}, idx); err != nil {
			return nil, err
		}
	}
	if idx == nil {
		return nil, errors.New("empty commit-graph chain")
	}
	return idx, nil
}

// memFile is a commit-graph file held in memory.
type memFile struct{ *bytes.Reader }

func (memFile) Close() error { return nil }

// walkGenerationsMax bounds the in-process walk: when more generations lie
// between the two commits than this, git's own walk over its mmapped graph
// (about 0.1 µs a commit) beats go-git's (about 1 µs) by more than the cost
// of starting git, so IsAncestor asks git instead.
var walkGenerationsMax uint64 = 5000

// errTooFar is returned by walkAncestor when the generations between the two
// commits exceed its bound.
var errTooFar = errors.New("commits too many generations apart for an in-process walk")

// walkAncestor searches b's ancestry for a, skipping every commit whose
// generation is below a's. Generation numbers only grow from parent to
// child, and commits outside the graph count as infinitely high, so the
// pruning never skips a path to a. It returns errTooFar, without walking,
// when more than maxGap generations separate b from a.
func walkAncestor(nodes commitgraph.CommitNodeIndex, a, b plumbing.Hash, maxGap uint64) (bool, error) {
	na, err := nodes.Get(a)
	if err != nil {
		return false, err
	}
	nb, err := nodes.Get(b)
	if err != nil {
		return false, err
	}
	genA := na.Generation()
	if genB := nb.Generation(); genB != math.MaxUint64 && genA != math.MaxUint64 && genB > genA && genB-genA > maxGap {
		return false, errTooFar
	}
	seen := map[plumbing.Hash]bool{b: true}
	stack := []commitgraph.CommitNode{nb}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n.ID() == a {
			return true, nil
		}
		for i := 0; i < n.NumParents(); i++ {
			p, err := n.ParentNode(i)
			if err != nil {
				return false, err
			}
			if seen[p.ID()] || p.Generation() < genA {
				continue
			}
			seen[p.ID()] = true
			stack = append(stack, p)
		}
	}
	return false, nil
}

// MergeTree computes the merge of theirs into ours with git merge-tree
// --write-tree, touching no worktree and no ref (it writes tree and blob
// objects). It returns the merged tree, or, on a conflict, the conflicting
// paths as named (-z: no quoting of unusual bytes) with an empty tree. Both
// sides must be resolved commits (ResolveCommit): on git 2.39 an unknown
// ref exits 1 like a conflict.
func (r *Repo) MergeTree(ctx context.Context, ours, theirs string) (tree string, conflicts []string, err error) {
	out, err := GitBytes(ctx, r.CommonDir, nil, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs)
	var ge *GitError
	conflict := errors.As(err, &ge) && ge.ExitCode == 1
	if err != nil && !conflict {
		return "", nil, err
	}
	fields := strings.Split(string(out), "\x00")
	if !conflict {
		return strings.TrimSpace(fields[0]), nil, nil
	}
	seen := map[string]bool{}
	for _, p := range fields[1:] {
		if p != "" && !seen[p] {
			seen[p] = true
			conflicts = append(conflicts, p)
		}
	}
	if len(conflicts) == 0 {
		conflicts = []string{"(git named no path)"}
	}
	return "", conflicts, nil
}
