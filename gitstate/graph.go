package gitstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
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
			if b, ok := strings.CutPrefix(rev, "refs/heads/"); ok {
				if hint := r.RemoteTrackingHint(b); hint != "" {
					return "", fmt.Errorf("%s does not name a commit: %s", b, hint)
				}
			}
			return "", fmt.Errorf("%s does not name a commit", strings.TrimPrefix(rev, "refs/heads/"))
		}
		return "", err
	}
	return out, nil
}

// IsAncestor reports whether commit a is an ancestor of commit b (a commit
// is its own ancestor); a and b are full commit ids (ResolveCommit).
//
// It walks in process from b (walkAncestor): over the commit-graph when
// there is one, never below a's generation, so a "no" costs the commits
// between the two generations, not the whole history; commits outside the
// graph (all of them without one) are read as loose objects. When the walk
// meets a commit it cannot read that way (packed, beyond the graph), or
// the repository is shallow or has replace refs, it asks git merge-base
// --is-ancestor.
func (r *Repo) IsAncestor(ctx context.Context, a, b string) (bool, error) {
	if a == b {
		return true, nil
	}
	if g := r.commitGraph(); g != nil {
		if ok, err := r.walkAncestor(g, a, b); err == nil {
			return ok, nil
		}
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
// when both walks can be made there (see IsAncestor), else with a single
// git merge-base (the merge base is b when b is contained, t when the
// target is behind).
func (r *Repo) Relate(ctx context.Context, t, b string) (Relation, error) {
	if t == b {
		return Contained, nil
	}
	if g := r.commitGraph(); g != nil {
		if rel, err := r.relateInProcess(g, t, b); err == nil {
			return rel, nil
		}
	}
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

func (r *Repo) relateInProcess(g *commitGraph, t, b string) (Relation, error) {
	if in, err := r.walkAncestor(g, b, t); err != nil || in {
		return Contained, err
	}
	if in, err := r.walkAncestor(g, t, b); err != nil || in {
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

// commitGraph maps, once per Repo, the repository's commit-graph, or
// gives an empty one when there is none (or it is damaged: git would not
// trust it either), so that walks read every commit as a loose object. It
// is nil when the parents recorded in commits are not what git would
// answer with: a shallow repository (grafted history) or replace refs.
func (r *Repo) commitGraph() *commitGraph {
	r.graphOnce.Do(func() {
		if r.rewritesParents() {
			return
		}
		g, err := openCommitGraph(filepath.Join(r.CommonDir, "objects", "info"))
		if err != nil {
			g = &commitGraph{}
		}
		r.graph = g
	})
	return r.graph
}

// rewritesParents reports whether git would see other parents than the
// commit objects record: .git/shallow, or any refs/replace/ ref.
func (r *Repo) rewritesParents() bool {
	if _, err := os.Stat(filepath.Join(r.CommonDir, "shallow")); err == nil {
		return true
	}
	if entries, err := os.ReadDir(filepath.Join(r.CommonDir, "refs", "replace")); err == nil && len(entries) > 0 {
		return true
	}
	packed, err := os.ReadFile(filepath.Join(r.CommonDir, "packed-refs"))
	return err == nil && bytes.Contains(packed, []byte(" refs/replace/"))
}

// ErrShallow marks an answer a shallow clone cannot give: its history is
// cut, so the merge base git would use may not be the real one.
var ErrShallow = errors.New("history is cut")

func (r *Repo) isShallow() bool {
	_, err := os.Stat(filepath.Join(r.CommonDir, "shallow"))
	return err == nil
}

// MergeTree computes the merge of theirs into ours with git merge-tree
// --write-tree, touching no worktree and no ref (it writes tree and blob
// objects). It returns the merged tree, or, on a conflict, the conflicting
// paths as named (-z: no quoting of unusual bytes) with an empty tree. Both
// sides must be resolved commits (ResolveCommit): on git 2.39 an unknown
// ref exits 1 like a conflict. In a shallow clone a failure or a conflict
// is an error wrapping ErrShallow, never a definite conflict.
func (r *Repo) MergeTree(ctx context.Context, ours, theirs string) (tree string, conflicts []string, err error) {
	out, err := GitBytes(ctx, r.CommonDir, nil, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs)
	var ge *GitError
	conflict := errors.As(err, &ge) && ge.ExitCode == 1
	if (err != nil) && r.isShallow() {
		// A cut history hides the fork point: git then finds no merge base
		// ("unrelated histories") or an older one, whose conflicts may not
		// be real. Neither is a definite answer.
		what := "fails"
		if conflict {
			what = "reports a conflict"
		}
		return "", nil, fmt.Errorf("git merge-tree %s, but this clone is shallow (%s exists), so the merge base may be past the cut: %w; run git fetch --unshallow (or fetch deeper), then run this again: %v",
			what, filepath.Join(r.CommonDir, "shallow"), ErrShallow, err)
	}
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
