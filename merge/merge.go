// Package merge merges a branch into a target branch, one merger at a time
// under the target's lease, idempotently: every run reads the git graph
// first (already merged, fast-forward, real merge), so re-running after a
// crash at any point converges on the same target with no second merge
// commit. Ref writes go through `git update-ref <ref> <new> <old>` (or a
// push with --force-with-lease), a compare-and-swap git itself honours,
// fencing-checked under the lease lock right before the write.
package merge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Kind is what a merge found (or, with Check, would do).
type Kind string

const (
	AlreadyMerged Kind = "already-merged"
	FastForward   Kind = "fast-forward"
	Merged        Kind = "merge"
	Conflict      Kind = "conflict"
)

// Errors callers tell apart (wrapped).
var (
	ErrConflict       = errors.New("merge conflict")
	ErrNotFastForward = errors.New("not a fast-forward")
	ErrDirtyWorktree  = errors.New("the target's worktree has local changes")
)

// Defaults.
const (
	WaitDefault = 10 * time.Minute
	// attempts bounds how often a merge starts again because the target
	// moved under it.
	attempts = 8
)

// Signature is the author and committer of a merge commit.
type Signature struct {
	Name, Email string
	When        time.Time
}

// Request is one merge.
type Request struct {
	Branch, Target string
	FFOnly         bool
	// Check decides and reports without writing anything.
	Check bool
	// Remote, when set, is fetched first and receives the result.
	Remote string
	// Token is a lease the caller holds; 0 takes the lease for the merge,
	// waiting up to Wait.
	Token  uint64
	Wait   time.Duration
	Holder string
	TTL    time.Duration
	// Job names the job in the merge commit's Orch-Job trailer ("" none).
	Job string
	// Author signs the merge commit; zero takes git's identity and now.
	// A job passes the identity and time fixed when it was claimed, so a
	// rebuilt merge commit has the same id.
	Author Signature
}

// Result is what a merge did.
type Result struct {
	Kind      Kind     `json:"result"`
	Branch    string   `json:"branch"`
	Target    string   `json:"target"`
	BranchTip string   `json:"branch_tip"`
	OldTarget string   `json:"old_target"`
	NewTarget string   `json:"new_target"`
	Commit    string   `json:"merge_commit,omitempty"`
	Conflicts []string `json:"conflicts,omitempty"`
	Token     uint64   `json:"token,omitempty"`
	Pushed    bool     `json:"pushed,omitempty"`
	Worktree  string   `json:"worktree,omitempty"`
	Written   bool     `json:"written"`
}

// Merger merges in one repository.
type Merger struct {
	Repo   *gitstate.Repo
	Leases *lease.Manager
}

// New returns the merger of a repository.
func New(repo *gitstate.Repo) *Merger {
	return &Merger{Repo: repo, Leases: lease.Open(repo.StateDir())}
}

// Merge runs DESIGN.md's merge finalization for req.
func (m *Merger) Merge(ctx context.Context, req Request) (*Result, error) {
	if err := gitstate.ValidateBranch(req.Branch); err != nil {
		return nil, err
	}
	if err := gitstate.ValidateBranch(req.Target); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if req.Remote != "" && strings.HasPrefix(req.Remote, "-") {
		return nil, fmt.Errorf("%w: remote %q starts with '-'", gitstate.ErrBadName, req.Remote)
	}
	if req.Check {
		return m.decide(ctx, req)
	}
	if sig := &req.Author; sig.Name == "" || sig.Email == "" {
		// Asked before the lease, not under it: git var is a process, and
		// every process under the lease is one more every waiter waits for.
		sig.Name, sig.Email = m.identity(ctx)
	}
	// So is git status: a target worktree found clean now needs no second
	// look under the lease (its files can change under the lease as well as
	// before it: the lease does not lock the worktree, and the final
	// read-tree -m -u never overwrites a local change). One found dirty is
	// looked at again under the lease, where no other merge is half-way
	// through bringing it along.
	cleanBefore := m.cleanWorktree(ctx, req.Target)
	token := req.Token
	if token == 0 {
		owner, err := procid.Self()
		if err != nil {
			return nil, err
		}
		holder := req.Holder
		if holder == "" {
			holder = "merge " + req.Branch
		}
		wait := req.Wait
		if wait == 0 {
			wait = WaitDefault
		}
		ttl := req.TTL
		if ttl == 0 {
			ttl = 15 * time.Minute
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		l, err := m.Leases.Acquire(wctx, req.Target, lease.Request{Holder: holder, Owner: owner, TTL: ttl})
		cancel()
		if err != nil {
			return nil, err
		}
		token = l.Token
		defer m.Leases.Release(context.WithoutCancel(ctx), req.Target, token)
	}
	owed, err := m.finishSync(ctx, req.Target)
	if err != nil {
		return nil, err
	}
	if owed {
		// A merge before this one left its sync owed: the worktree may not
		// be what it was when found clean.
		cleanBefore = ""
	}
	for i := 0; i < attempts; i++ {
		res, err := m.decide(ctx, req)
		if err == nil && res.Kind == AlreadyMerged && req.Remote != "" {
			// A push that landed before a crash: the remote has it, the
			// local target may still be behind.
			res.Token = token
			return res, m.bringLocal(ctx, req, token, res, cleanBefore)
		}
		if err != nil || res.Kind == AlreadyMerged {
			if res != nil {
				res.Token = token
			}
			return res, err
		}
		res.Token = token
		moved, err := m.write(ctx, req, token, res, cleanBefore)
		if err != nil {
			return res, err
		}
		if !moved {
			return res, nil
		}
	}
	return nil, fmt.Errorf("merge %s into %s: the target kept moving; %d attempts made, try again", req.Branch, req.Target, attempts)
}

// refs returns the refs the merge reads: the target's (the remote's, with a
// remote) and the branch's (local, or the remote's when there is no local).
func (m *Merger) refs(ctx context.Context, req Request) (branchRef, targetRef string) {
	branchRef, targetRef = "refs/heads/"+req.Branch, "refs/heads/"+req.Target
	if req.Remote != "" {
		targetRef = "refs/remotes/" + req.Remote + "/" + req.Target
		if _, err := m.Repo.ResolveCommit(ctx, branchRef); err != nil {
			branchRef = "refs/remotes/" + req.Remote + "/" + req.Branch
		}
	}
	return branchRef, targetRef
}

// decide reads the graph and computes what the merge is, building the merge
// commit object (not any ref) for a real merge unless req.Check.
func (m *Merger) decide(ctx context.Context, req Request) (*Result, error) {
	if req.Remote != "" {
		if err := m.fetch(ctx, req); err != nil {
			return nil, err
		}
	}
	branchRef, targetRef := m.refs(ctx, req)
	b, err := m.Repo.ResolveCommit(ctx, branchRef)
	if err != nil {
		return nil, fmt.Errorf("merge: branch %s", err)
	}
	t, err := m.Repo.ResolveCommit(ctx, targetRef)
	if err != nil {
		return nil, fmt.Errorf("merge: target %s", err)
	}
	res := &Result{Branch: req.Branch, Target: req.Target, BranchTip: b, OldTarget: t, NewTarget: t}
	rel, err := m.Repo.Relate(ctx, t, b)
	switch {
	case err != nil:
		return nil, err
	case rel == gitstate.Contained:
		res.Kind = AlreadyMerged
		return res, nil
	case rel == gitstate.Behind:
		res.Kind, res.NewTarget = FastForward, b
		return res, nil
	}
	if req.FFOnly {
		res.Kind = Merged
		return res, fmt.Errorf("merge %s into %s: %w (--ff-only); rebase the branch on %s or drop --ff-only", req.Branch, req.Target, ErrNotFastForward, req.Target)
	}
	tree, conflicts, err := m.Repo.MergeTree(ctx, t, b)
	if err != nil {
		return nil, err
	}
	if len(conflicts) > 0 {
		res.Kind, res.Conflicts = Conflict, conflicts
		return res, fmt.Errorf("merge %s into %s: %w in %s", req.Branch, req.Target, ErrConflict, strings.Join(res.Conflicts, ", "))
	}
	res.Kind = Merged
	if req.Check {
		return res, nil
	}
	commit, err := m.commitTree(ctx, req, tree, t, b)
	if err != nil {
		return nil, err
	}
	crashpoint.Hit("merge.commit_tree")
	res.Commit, res.NewTarget = commit, commit
	return res, nil
}

// commitTree makes the merge commit with parents t and b.
func (m *Merger) commitTree(ctx context.Context, req Request, tree, t, b string) (string, error) {
	sig := req.Author
	if sig.Name == "" || sig.Email == "" {
		sig.Name, sig.Email = m.identity(ctx)
	}
	if sig.When.IsZero() {
		sig.When = time.Now()
	}
	msg := fmt.Sprintf("Merge branch '%s' into %s\n", req.Branch, req.Target)
	if req.Job != "" {
		msg += "\nOrch-Job: " + req.Job + "\n"
	}
	date := fmt.Sprintf("@%d +0000", sig.When.Unix())
	env := []string{
		"GIT_AUTHOR_NAME=" + sig.Name, "GIT_AUTHOR_EMAIL=" + sig.Email, "GIT_AUTHOR_DATE=" + date,
		"GIT_COMMITTER_NAME=" + sig.Name, "GIT_COMMITTER_EMAIL=" + sig.Email, "GIT_COMMITTER_DATE=" + date,
	}
	out, err := gitstate.GitEnvOut(ctx, m.Repo.CommonDir, env, []byte(msg), "commit-tree", tree, "-p", t, "-p", b)
	if err != nil {
		return "", fmt.Errorf("merge commit: %w", err)
	}
	return strings.TrimSpace(out), nil
}

// identity is git's committer identity in this repository, or a fixed one
// when none is configured.
func (m *Merger) identity(ctx context.Context) (string, string) {
	return Identity(ctx, m.Repo)
}

// Identity returns the committer name and email git would use in repo, or
// "orch-hooks <orch-hooks@localhost>" when none is configured.
func Identity(ctx context.Context, repo *gitstate.Repo) (string, string) {
	// What git var would answer first, without its process: the
	// environment wins over every config file.
	if name, email := os.Getenv("GIT_COMMITTER_NAME"), os.Getenv("GIT_COMMITTER_EMAIL"); name != "" && email != "" {
		return name, email
	}
	dir := repo.Worktree
	if dir == "" {
		dir = repo.CommonDir
	}
	out, err := gitstate.Git(ctx, dir, "var", "GIT_COMMITTER_IDENT")
	if err == nil {
		if i := strings.Index(out, " <"); i > 0 {
			if j := strings.Index(out[i:], ">"); j > 0 {
				return out[:i], out[i+2 : i+j]
			}
		}
	}
	return "orch-hooks", "orch-hooks@localhost"
}

// fetch updates the remote-tracking refs of the target and the branch.
func (m *Merger) fetch(ctx context.Context, req Request) error {
	_, err := gitstate.Git(ctx, m.Repo.CommonDir, "fetch", "--quiet", "--no-tags", "--end-of-options", req.Remote,
		"+refs/heads/"+req.Target+":refs/remotes/"+req.Remote+"/"+req.Target)
	if err != nil {
		return fmt.Errorf("fetch %s from %s: %w", req.Target, req.Remote, err)
	}
	// The branch may exist only locally; a failure here is not fatal.
	gitstate.Git(ctx, m.Repo.CommonDir, "fetch", "--quiet", "--no-tags", "--end-of-options", req.Remote,
		"+refs/heads/"+req.Branch+":refs/remotes/"+req.Remote+"/"+req.Branch)
	return nil
}

// write moves the target from res.OldTarget to res.NewTarget: a push with a
// remote, an update-ref locally, each fencing-checked. moved reports that
// the target had moved meanwhile, so the caller decides again.
func (m *Merger) write(ctx context.Context, req Request, token uint64, res *Result, cleanBefore string) (moved bool, err error) {
	if req.Remote != "" {
		return m.push(ctx, req, token, res, cleanBefore)
	}
	return m.updateLocal(ctx, req.Target, token, res.OldTarget, res.NewTarget, res, cleanBefore)
}

func (m *Merger) push(ctx context.Context, req Request, token uint64, res *Result, cleanBefore string) (bool, error) {
	var rejected bool
	err := m.Leases.WithToken(ctx, req.Target, token, func() error {
		out, err := gitstate.Git(ctx, m.Repo.CommonDir, "push", "--porcelain",
			"--force-with-lease=refs/heads/"+req.Target+":"+res.OldTarget, "--end-of-options",
			req.Remote, res.NewTarget+":refs/heads/"+req.Target)
		// --porcelain reports each ref on stdout; "!" marks a rejection
		// (stale info: the remote's target moved since the fetch).
		var ge *gitstate.GitError
		if errors.As(err, &ge) && pushRejected(out) {
			rejected = true
			return nil
		}
		return err
	})
	if err != nil {
		return false, err
	}
	if rejected {
		return true, nil
	}
	crashpoint.Hit("merge.push")
	res.Pushed, res.Written = true, true
	gitstate.Git(ctx, m.Repo.CommonDir, "update-ref", "refs/remotes/"+req.Remote+"/"+req.Target, res.NewTarget)
	return false, m.bringLocal(ctx, req, token, res, cleanBefore)
}

// bringLocal fast-forwards the local target to the remote's new tip, when
// there is a local target and that is a fast-forward.
func (m *Merger) bringLocal(ctx context.Context, req Request, token uint64, res *Result, cleanBefore string) error {
	local, err := m.Repo.ResolveCommit(ctx, "refs/heads/"+req.Target)
	if err != nil {
		return nil // no local target: nothing to bring along
	}
	if local == res.NewTarget {
		return nil
	}
	if ok, _ := m.Repo.IsAncestor(ctx, local, res.NewTarget); !ok {
		return nil
	}
	_, err = m.updateLocal(ctx, req.Target, token, local, res.NewTarget, res, cleanBefore)
	return err
}

// updateLocal moves refs/heads/target from old to new with a fencing-checked
// compare-and-swap and brings a worktree that has the target checked out to
// the new commit. It refuses, changing nothing, when that worktree has
// local changes; cleanBefore names a worktree found clean before the lease
// (cleanWorktree), which is not asked again.
func (m *Merger) updateLocal(ctx context.Context, target string, token uint64, old, new string, res *Result, cleanBefore string) (bool, error) {
	wt, err := m.worktreeOf(ctx, target)
	if err != nil {
		return false, err
	}
	if wt != "" {
		if wt != cleanBefore {
			st, err := gitstate.Git(ctx, wt, "status", "--porcelain", "--untracked-files=no")
			if err != nil {
				return false, err
			}
			if st != "" {
				return false, fmt.Errorf("merge into %s: %w: %s has uncommitted changes (%s); commit or stash them, then run the merge again",
					target, ErrDirtyWorktree, wt, firstLines(st, 3))
			}
		}
		// An untracked file where the new commit has one would stop the
		// worktree update after the ref moved: find out before.
		if _, err := gitstate.Git(ctx, wt, "read-tree", "-m", "-u", "-n", old, new); err != nil {
			return false, fmt.Errorf("merge into %s: %w: %s could not be brought to the new commit (%v); move the files in the way, then run the merge again",
				target, ErrDirtyWorktree, wt, err)
		}
	}
	var moved bool
	err = m.Leases.WithToken(ctx, target, token, func() error {
		if wt != "" {
			if err := m.savePending(pending{Target: target, Worktree: wt, From: old, To: new}); err != nil {
				return err
			}
		}
		_, err := gitstate.Git(ctx, m.Repo.CommonDir, "update-ref", "-m", "orch-hooks merge "+res.Branch,
			"refs/heads/"+target, new, old)
		if err != nil {
			cur, rerr := m.Repo.ResolveCommit(ctx, "refs/heads/"+target)
			if rerr == nil && cur != old {
				moved = true
				m.clearPending(target)
				return nil
			}
			return fmt.Errorf("update %s: %w", target, err)
		}
		return nil
	})
	if err != nil || moved {
		return moved, err
	}
	crashpoint.Hit("merge.update_ref")
	res.Written = true
	if wt != "" {
		res.Worktree = wt
		// status just found the index and files at the old commit: no need
		// to check the index the way a sync after a crash does.
		if err := m.sync(ctx, pending{Target: target, Worktree: wt, From: old, To: new}, false); err != nil {
			return false, err
		}
	}
	return false, nil
}

// pushRejected reports whether git push --porcelain output shows the ref
// update rejected ("!" flag), as opposed to a push that failed otherwise.
func pushRejected(porcelain string) bool {
	for _, line := range strings.Split(porcelain, "\n") {
		if strings.HasPrefix(line, "!\t") {
			return true
		}
	}
	return false
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "; ")
}

// cleanWorktree returns the worktree that has target checked out if git
// status finds no local change there, else "" (none, dirty, or status
// failed: the look under the lease decides).
func (m *Merger) cleanWorktree(ctx context.Context, target string) string {
	wt, err := m.worktreeOf(ctx, target)
	if err != nil || wt == "" {
		return ""
	}
	// --no-optional-locks: status would otherwise take index.lock to write
	// back refreshed stat data, and the lease holder's read-tree, finding
	// the lock taken, would fail its merge.
	st, err := gitstate.Git(ctx, wt, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
	if err != nil || st != "" {
		return ""
	}
	return wt
}

// worktreeOf returns the worktree that has branch checked out, or "".
func (m *Merger) worktreeOf(ctx context.Context, branch string) (string, error) {
	return m.Repo.WorktreeOf(branch)
}

// pending records a worktree sync owed after a ref update, so that a crash
// between the update and the sync is finished by the next merge run.
type pending struct {
	Target   string `toml:"target"`
	Worktree string `toml:"worktree"`
	From     string `toml:"from"`
	To       string `toml:"to"`
}

func (m *Merger) pendingPath(target string) string {
	return filepath.Join(m.Repo.StateDir(), "merges", gitstate.RefFileName(target)+".toml")
}

func (m *Merger) savePending(p pending) error {
	path := m.pendingPath(p.Target)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(p); err != nil {
		return err
	}
	return statefile.Replace(path, buf.Bytes())
}

func (m *Merger) clearPending(target string) {
	os.Remove(m.pendingPath(target))
}

// finishSync brings the target's worktree from the old commit to the new one
// if a ref update left that owed: read-tree -m -u updates the index and the
// files from one tree to the other and refuses to overwrite local changes.
// owed reports whether a sync was recorded as owed (done now, or found
// moot).
func (m *Merger) finishSync(ctx context.Context, target string) (owed bool, err error) {
	data, err := statefile.ReadFile(m.pendingPath(target), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	var p pending
	if _, err := toml.Decode(string(data), &p); err != nil {
		return true, &gitstate.UnreadableError{Path: m.pendingPath(target), Err: err}
	}
	cur, err := m.Repo.ResolveCommit(ctx, "refs/heads/"+target)
	if err != nil {
		return true, err
	}
	if cur != p.To {
		// The update never happened (crash before it), or the target moved
		// on by other means: the worktree is not ours to touch.
		m.clearPending(target)
		return true, nil
	}
	return true, m.sync(ctx, p, true)
}

// sync brings p's worktree from p.From to p.To and clears the pending
// record. checkIndex first makes sure the index still holds p.From's tree
// (after a crash the sync may have happened, or the user moved on; either
// way the worktree is left alone).
func (m *Merger) sync(ctx context.Context, p pending, checkIndex bool) error {
	if _, err := os.Stat(p.Worktree); err == nil {
		owed := true
		if checkIndex {
			idx, err := gitstate.Git(ctx, p.Worktree, "write-tree")
			if err != nil {
				return fmt.Errorf("sync worktree %s: %w", p.Worktree, err)
			}
			oldTree, _ := gitstate.Git(ctx, p.Worktree, "rev-parse", p.From+"^{tree}")
			owed = idx == oldTree
		}
		if owed {
			if _, err := gitstate.Git(ctx, p.Worktree, "read-tree", "-m", "-u", p.From, p.To); err != nil {
				return fmt.Errorf("%s now points at %s, but its worktree %s could not be updated: %w; run git -C %s reset --keep %s",
					p.Target, short(p.To), p.Worktree, err, p.Worktree, short(p.To))
			}
		}
	}
	m.clearPending(p.Target)
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
