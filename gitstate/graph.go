package gitstate

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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
// generation (topological level): a commit of a lower level cannot have a
// as an ancestor, so a "no" costs the commits between the two levels, not
// the whole history. Commits newer than the graph are read as loose
// objects. Without a commit-graph, or when the walk meets a packed commit
// the graph does not have, it asks git merge-base --is-ancestor.
func (r *Repo) IsAncestor(ctx context.Context, a, b string) (bool, error) {
	if a == b {
		return true, nil
	}
	if g := r.commitGraph(); g != nil {
		ok, err := r.walkAncestor(g, a, b)
		if err == nil {
			return ok, nil
		}
		// A packed commit outside the graph, or a damaged graph: git
		// knows best.
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
	if r.commitGraph() == nil {
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

// commitGraph maps, once per Repo, the repository's commit-graph; nil when
// there is none or it cannot be read (git is asked instead).
func (r *Repo) commitGraph() *commitGraph {
	r.graphOnce.Do(func() {
		r.graph, _ = openCommitGraph(filepath.Join(r.CommonDir, "objects", "info"))
	})
	return r.graph
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
