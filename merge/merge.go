// Package merge merges a branch into a target branch, one merger at a time
// under the target's lease, idempotently: every run reads the git graph
// first (already merged, fast-forward, real merge), so re-running after a
// crash at any point converges on the same target with no second merge
// commit. Ref writes go through `git update-ref <ref> <new> <old>` (or a
// push with --force-with-lease), a compare-and-swap git itself honours,
// fencing-checked under the lease lock right before the write.
package merge

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/remotelease"
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
	// ErrDirtyWorktree: the target's checked-out worktree has local
	// changes in paths the merge changes (a *DirtyError names them);
	// nothing was written.
	ErrDirtyWorktree = errors.New("local changes in the target's worktree would be overwritten")
	// ErrIndexLocked: another git process held the index of the target's
	// worktree past Request.IndexLockWait; nothing was written.
	ErrIndexLocked = errors.New("index.lock held by another git process")
	// ErrBranchMoved: Request.Commit is set and the branch no longer
	// points at it; nothing was written.
	ErrBranchMoved = errors.New("the branch moved after its gates judged it")
)

// Defaults.
const (
	WaitDefault = 10 * time.Minute
	// IndexLockWaitDefault is how long a merge waits for another git
	// process (an editor's or a prompt's git status) to let go of the
	// index of the target's worktree before it refuses. git itself does
	// not wait at all; these holds last milliseconds.
	IndexLockWaitDefault = 3 * time.Second
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
	// Commit, when set, is the commit to merge — the one the caller's
	// gates judged — instead of the branch's tip. The branch must still
	// point at it when the merge decides under the lease; if it moved
	// (a commit pushed while the merge waited for the lease), the merge
	// refuses with ErrBranchMoved rather than merge a commit no gate saw.
	// The already-merged, fast-forward and merge decision is made for
	// Commit, so a merge that moved the target before a crash is found
	// merged on the next run.
	Commit string
	FFOnly bool
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
	// Fence, when set, is the caller's part of the merge's fence: the
	// merger calls it under the lease lock immediately before each ref
	// update and push, with that write as effect. It runs effect only
	// while the caller still owns the merge (a job: still running under
	// this monitor), holding whatever lock makes its check and the write
	// one step, and otherwise returns an error saying why, effect not run.
	// Nil runs effect.
	Fence func(ctx context.Context, effect func() error) error
	// IndexLockWait bounds the wait for another git process's index.lock
	// in the target's worktree; zero means IndexLockWaitDefault.
	IndexLockWait time.Duration
	// Author signs the merge commit; zero takes git's identity and now.
	// A job passes the identity and time fixed when it was claimed, so a
	// rebuilt merge commit has the same id.
	Author Signature
	// Shared, in remote mode, is the leases of Remote shared by every
	// machine (docs/DISTRIBUTED.md): the merge also takes the target's
	// lease there (after the local one, within the same Wait), and its
	// push of the target is one atomic push with a renewal of that lease,
	// so it lands only while the lease is still this merge's. Requires
	// Remote.
	Shared *remotelease.Manager
	// SendToken sends the shared lease's token as a push option for the
	// server's pre-receive hook (orch-hooks install --server) to check.
	SendToken bool

	held *remotelease.Held // the shared lease, once taken
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
	// LocalChanges are the paths of the target's worktree whose local
	// changes (staged, unstaged or untracked) refused the merge.
	LocalChanges []string `json:"local_changes,omitempty"`
	Token        uint64   `json:"token,omitempty"`
	// SharedToken is the token of the shared lease (remote mode).
	SharedToken uint64 `json:"shared_token,omitempty"`
	Pushed      bool   `json:"pushed,omitempty"`
	Worktree    string `json:"worktree,omitempty"`
	Written     bool   `json:"written"`
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
	if req.Shared != nil && req.Remote == "" {
		return nil, fmt.Errorf("merge %s into %s: a shared lease needs the remote it lives on (Request.Remote)", req.Branch, req.Target)
	}
	token := req.Token
	if token == 0 || req.Shared != nil {
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
		lr := lease.Request{Holder: holder, Owner: owner, TTL: ttl}
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		if token == 0 {
			l, err := m.Leases.Acquire(wctx, req.Target, lr)
			if err != nil {
				return nil, err
			}
			token = l.Token
			defer m.Leases.Release(context.WithoutCancel(ctx), req.Target, token)
		}
		if req.Shared != nil {
			// After the local lease: one process of this clone at a time
			// asks the remote, and the local fences still hold.
			h, err := req.Shared.Acquire(wctx, req.Target, lr)
			if err != nil {
				return nil, err
			}
			req.held = h
			defer req.Shared.Release(context.WithoutCancel(ctx), h)
		}
		cancel()
	}
	if _, err := m.finishSync(ctx, req.Target, token); err != nil {
		return nil, err
	}
	for i := 0; i < attempts; i++ {
		res, err := m.decide(ctx, req)
		if res != nil && req.held != nil {
			res.SharedToken = req.held.Token
		}
		if err == nil && res.Kind == AlreadyMerged && req.Remote != "" {
			// A push that landed before a crash: the remote has it, the
			// local target may still be behind.
			res.Token = token
			return res, m.bringLocal(ctx, req, token, res)
		}
		if err != nil || res.Kind == AlreadyMerged {
			if res != nil {
				res.Token = token
			}
			return res, err
		}
		res.Token = token
		moved, err := m.write(ctx, req, token, res)
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
	if req.Commit != "" && b != req.Commit {
		return nil, fmt.Errorf("merge %s into %s: %w: %s is at %s, its gates judged %s; nothing merged",
			req.Branch, req.Target, ErrBranchMoved, req.Branch, b, req.Commit)
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
func (m *Merger) write(ctx context.Context, req Request, token uint64, res *Result) (moved bool, err error) {
	if req.Remote != "" {
		return m.push(ctx, req, token, res)
	}
	return m.updateLocal(ctx, req, token, res.OldTarget, res.NewTarget, res)
}

func (m *Merger) push(ctx context.Context, req Request, token uint64, res *Result) (bool, error) {
	var rejected bool
	err := m.Leases.WithToken(ctx, req.Target, token, func() error {
		return m.fenced(ctx, req, func() error {
			if req.held != nil {
				// One atomic push: the target from T, and the shared lease
				// renewed from this merge's last version of it. Another
				// machine's takeover fails it whole (lease.ErrStaleToken).
				err := req.Shared.Fenced(ctx, req.held, []refstore.Update{
					{Ref: "refs/heads/" + req.Target, Old: res.OldTarget, New: res.NewTarget},
				}, req.SendToken)
				if errors.Is(err, refstore.ErrConflict) && !errors.Is(err, lease.ErrStaleToken) {
					rejected = true // the target moved since the fetch
					return nil
				}
				return err
			}
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
	return false, m.bringLocal(ctx, req, token, res)
}

// bringLocal fast-forwards the local target to the remote's new tip, when
// there is a local target and that is a fast-forward.
func (m *Merger) bringLocal(ctx context.Context, req Request, token uint64, res *Result) error {
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
	if _, err := m.updateLocal(ctx, req, token, local, res.NewTarget, res); err != nil {
		return fmt.Errorf("%s on %s is now %s, but the local %s was not brought along (it stays at %s): %w",
			req.Target, req.Remote, short(res.NewTarget), req.Target, short(local), err)
	}
	return nil
}

// updateLocal moves refs/heads/<target> from old to new with a
// fencing-checked compare-and-swap. A worktree that has the target checked
// out moves with it, under its index.lock (moveWithWorktree), or the ref
// does not move: local changes there in paths the merge does not touch are
// kept, as git merge keeps them; one in a path it touches refuses the
// merge (a *DirtyError naming those paths), changing nothing.
func (m *Merger) updateLocal(ctx context.Context, req Request, token uint64, old, new string, res *Result) (bool, error) {
	target := req.Target
	wt, err := m.worktreeOf(ctx, target)
	if err != nil {
		return false, err
	}
	var moved bool
	err = m.Leases.WithToken(ctx, target, token, func() error {
		if wt != "" {
			// A caller that no longer owns the merge does not even touch
			// the worktree (the fence is asked again right before the ref
			// moves).
			if err := m.fenced(ctx, req, func() error { return nil }); err != nil {
				return err
			}
			var err error
			moved, err = m.moveWithWorktree(ctx, req, wt, old, new, res)
			return err
		}
		var err error
		moved, err = m.casRef(ctx, req, old, new, res)
		return err
	})
	if err != nil || moved {
		return moved, err
	}
	if wt == "" {
		crashpoint.Hit("merge.update_ref")
	}
	res.Written = true
	return false, nil
}

// casRef is the fenced compare-and-swap of the target from old to new.
// moved reports that the target was no longer at old (nothing written).
func (m *Merger) casRef(ctx context.Context, req Request, old, new string, res *Result) (moved bool, err error) {
	err = m.fenced(ctx, req, func() error {
		_, err := gitstate.Git(ctx, m.Repo.CommonDir, "update-ref", "-m", "orch-hooks merge "+res.Branch,
			"refs/heads/"+req.Target, new, old)
		if err == nil {
			res.Written = true
			return nil
		}
		cur, rerr := m.Repo.ResolveCommit(ctx, "refs/heads/"+req.Target)
		switch {
		case rerr == nil && cur == new:
			// The update happened and only its report was lost (we hold
			// the lease: nobody else wrote this value).
			res.Written = true
			return nil
		case rerr == nil && cur != old:
			moved = true
			return nil
		case rerr == nil:
			return fmt.Errorf("update %s: %w; %s was not moved", req.Target, err, req.Target)
		}
		return fmt.Errorf("update %s: %w", req.Target, err)
	})
	return moved, err
}

// fenced runs effect through req.Fence, the caller's part of the fence.
func (m *Merger) fenced(ctx context.Context, req Request, effect func() error) error {
	if req.Fence == nil {
		return effect()
	}
	return req.Fence(ctx, effect)
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

// worktreeOf returns the worktree that has branch checked out, or "".
func (m *Merger) worktreeOf(ctx context.Context, branch string) (string, error) {
	return m.Repo.WorktreeOf(branch)
}
