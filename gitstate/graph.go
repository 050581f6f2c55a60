package gitstate

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ResolveCommit returns the commit id rev names, or an error naming rev when
// it names no commit. Merges resolve both sides first: on git 2.39,
// merge-tree exits 1 for an unknown ref just as it does for a conflict.
func (r *Repo) ResolveCommit(ctx context.Context, rev string) (string, error) {
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
// is its own ancestor). It asks git merge-base --is-ancestor, whose walk is
// bounded by generation numbers when the repository has a commit-graph.
func (r *Repo) IsAncestor(ctx context.Context, a, b string) (bool, error) {
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
