package merge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// How the target's checked-out worktree moves with the ref (DESIGN.md,
// merge finalization step 6). git's own rule for the index is its lock
// file: whoever creates <git-dir>/index.lock with O_CREAT|O_EXCL owns the
// index until it renames the lock over the index (commit) or deletes it
// (roll back); every git command that writes the index, `git commit`
// first, fails while the lock exists. So the merge, under the lease lock:
//
//  1. creates index.lock exclusively, waiting a bounded time for another
//     git process to let go (else: refuse, ref unmoved);
//  2. records the pending move (merges/<target>.toml: worktree, git dir,
//     from, to, and the lock file's device and inode, so that a later run
//     knows the lock is the one this merge made);
//  3. refreshes a scratch copy of the index (GIT_INDEX_FILE) and runs
//     `git read-tree -m -u FROM TO` on it: git updates the files and
//     refuses, before touching any, when a path the merge changes has a
//     local change or an untracked file is in its way (git merge's rule;
//     ignored files are expendable to both); local changes elsewhere,
//     staged ones included, are kept. On refusal the lock is deleted, the
//     ref does not move, and the error names the paths (DirtyError);
//  4. writes the new index into index.lock (whose inode stays ours) and
//     records the move as ready;
//  5. moves the ref: the fenced compare-and-swap. If it loses, the files
//     go back (read-tree -m -u TO FROM) and the lock is deleted;
//  6. renames index.lock over index, git's commit of a lock file, and
//     clears the record.
//
// From the moment the ref moves until step 6, index.lock exists and holds
// the new index, so a plain `git commit` in the worktree fails instead of
// recording the old tree. A crash anywhere leaves either the ref unmoved
// (the next run rolls the files back and deletes the lock) or the ref moved
// with the lock holding the new index (the next run checks that and
// renames it into place): finishSync.

// Phases of a pending worktree move.
const (
	phaseUpdating = "updating" // index.lock ours, files may be partly new
	phaseReady    = "ready"    // index.lock ours and holding the new index
)

// pending records a worktree move under way, so that a crash anywhere in it
// is finished or undone by the next merge run.
type pending struct {
	Target   string `toml:"target"`
	Worktree string `toml:"worktree"`
	GitDir   string `toml:"git_dir"`
	From     string `toml:"from"`
	To       string `toml:"to"`
	Phase    string `toml:"phase"`
	LockDev  uint64 `toml:"lock_dev"`
	LockIno  uint64 `toml:"lock_ino"`
}

func (p *pending) lockPath() string  { return filepath.Join(p.GitDir, "index.lock") }
func (p *pending) indexPath() string { return filepath.Join(p.GitDir, "index") }

// scratchPath is the index read-tree works on: in the worktree's git dir,
// so a rename from it would stay on one file system, and named for this
// tool. Only the holder of index.lock uses it.
func (p *pending) scratchPath() string { return filepath.Join(p.GitDir, "orch-merge-index") }

// removeScratch removes the scratch index and what a stopped read-tree or
// copy may have left beside it.
func (p *pending) removeScratch() {
	for _, suffix := range []string{"", ".lock", ".tmp"} {
		os.Remove(p.scratchPath() + suffix)
	}
}

// ours reports whether index.lock is the file this move created.
func (p *pending) ours() bool {
	fi, err := os.Lstat(p.lockPath())
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && uint64(st.Dev) == p.LockDev && uint64(st.Ino) == p.LockIno
}

func (m *Merger) pendingPath(target string) string {
	return filepath.Join(m.Repo.StateDir(), "merges", gitstate.RefFileName(target)+".toml")
}

func (m *Merger) savePending(p pending) error {
	path := m.pendingPath(p.Target)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// The worktree path may be any bytes: escaped so the record reads back.
	data, err := statefile.EncodeTOML(p)
	if err != nil {
		return err
	}
	return statefile.Replace(path, data)
}

func (m *Merger) clearPending(target string) error {
	if err := os.Remove(m.pendingPath(target)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear the pending worktree move of %s: %w", target, err)
	}
	return nil
}

// worktreeGitDir is the git dir of worktree wt, where its index lives: the
// common dir for the main worktree, .git/worktrees/<name> for a linked one.
func worktreeGitDir(ctx context.Context, wt string) (string, error) {
	dir, err := gitstate.Git(ctx, wt, "rev-parse", "--absolute-git-dir")
	if err != nil {
		return "", fmt.Errorf("the git dir of worktree %s: %w", wt, err)
	}
	return dir, nil
}

// indexLockBusy, when set (tests), is called once per lockIndex when the
// first try finds index.lock taken.
var indexLockBusy func(path string)

// lockIndex creates gitDir/index.lock the way git does (O_CREAT|O_EXCL),
// retrying with a growing pause for up to wait while another process has
// it. The caller owns the returned file until it renames or deletes it.
func lockIndex(ctx context.Context, gitDir, wt string, wait time.Duration) (*os.File, error) {
	path := filepath.Join(gitDir, "index.lock")
	deadline := time.Now().Add(wait)
	pause := 5 * time.Millisecond
	for first := true; ; first = false {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o666)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("lock the index of %s: %w", wt, err)
		}
		if first && indexLockBusy != nil {
			indexLockBusy(path)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w in %s (%s) for %s; let that git command finish (or, if no git process is running there, remove the file), then run the merge again",
				ErrIndexLocked, wt, path, wait)
		}
		t := time.NewTimer(min(pause, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock the index of %s: %w", wt, ctx.Err())
		case <-t.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// moveWithWorktree moves the target from old to new together with the
// worktree wt that has it checked out, under the lease lock (the caller
// holds it). On any failure before the ref moves, the worktree is as it
// was and the error says why; moved reports that the target was no longer
// at old.
func (m *Merger) moveWithWorktree(ctx context.Context, req Request, wt, old, new string, res *Result) (moved bool, err error) {
	gitDir, err := worktreeGitDir(ctx, wt)
	if err != nil {
		return false, err
	}
	wait := req.IndexLockWait
	if wait <= 0 {
		wait = IndexLockWaitDefault
	}
	lk, err := lockIndex(ctx, gitDir, wt, wait)
	if err != nil {
		return false, fmt.Errorf("merge into %s: %s was not moved: %w", req.Target, req.Target, err)
	}
	p := pending{Target: req.Target, Worktree: wt, GitDir: gitDir, From: old, To: new, Phase: phaseUpdating}
	// Until the record names the lock, a failure deletes it here.
	unlock := func() { lk.Close(); os.Remove(p.lockPath()) }
	var st syscall.Stat_t
	if err := syscall.Fstat(int(lk.Fd()), &st); err != nil {
		unlock()
		return false, fmt.Errorf("lock the index of %s: %w", wt, err)
	}
	p.LockDev, p.LockIno = uint64(st.Dev), uint64(st.Ino)
	if err := m.savePending(p); err != nil {
		unlock()
		return false, err
	}
	// From here the record names the lock: a crash is finished by the next
	// run; a failure undoes the move and then deletes the record.
	abandon := func() error {
		lk.Close()
		p.removeScratch()
		if err := os.Remove(p.lockPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return m.clearPending(p.Target)
	}
	crashpoint.Hit("merge.index_locked")
	p.removeScratch() // a read-tree or copy killed before ours
	if err := copyFile(p.indexPath(), p.scratchPath()); err != nil {
		abandon()
		return false, fmt.Errorf("merge into %s: copy the index of %s: %w; %s was not moved", req.Target, wt, err, req.Target)
	}
	scratch := []string{"GIT_INDEX_FILE=" + p.scratchPath()}
	// git merge refreshes the index first: a file whose stat data changed
	// but whose content did not (touched, checked out again) is no local
	// change, yet read-tree, trusting the index's stat data, would refuse
	// it. The refresh writes the scratch copy only; a failure here
	// (a change it cannot look at) is left to read-tree to judge.
	gitstate.GitEnvOut(ctx, wt, scratch, nil, "update-index", "-q", "--refresh")
	// read-tree -m -u, two-tree form, is git's own rule for local changes:
	// it refuses, before touching any file, when a path the merge changes
	// has a staged or unstaged change or an untracked file is in the way,
	// and keeps every other local change, staged ones in the index.
	if _, err := gitstate.GitEnvOut(ctx, wt, scratch, nil, "read-tree", "-m", "-u", old, new); err != nil {
		paths, perr := blockingChanges(ctx, wt, p.scratchPath(), old, new)
		abandon()
		if perr == nil && len(paths) > 0 {
			res.LocalChanges = paths
			return false, &DirtyError{Target: req.Target, Worktree: wt, Paths: paths}
		}
		return false, fmt.Errorf("merge into %s: %s could not be brought to the new commit, so %s was not moved: %v",
			req.Target, wt, req.Target, err)
	}
	crashpoint.Hit("merge.worktree_updated")
	if err := fillLock(lk, p.scratchPath()); err != nil {
		return false, m.rollBack(ctx, p, abandon, fmt.Errorf("write the new index of %s: %w", wt, err))
	}
	p.Phase = phaseReady
	if err := m.savePending(p); err != nil {
		return false, m.rollBack(ctx, p, abandon, err)
	}
	crashpoint.Hit("merge.index_ready")
	moved, err = m.casRef(ctx, req, old, new, res)
	if err != nil || moved {
		return moved, m.rollBack(ctx, p, abandon, err)
	}
	crashpoint.Hit("merge.update_ref")
	os.Remove(p.scratchPath())
	if err := commitLock(lk, p); err != nil {
		// The ref moved and index.lock holds the new index: a plain git
		// commit fails on the lock, and the next merge run renames it.
		return false, fmt.Errorf("%s now points at %s, but the new index of %s could not be put in place: %w; run the merge again to finish",
			req.Target, short(new), wt, err)
	}
	crashpoint.Hit("merge.index_committed")
	res.Worktree = wt
	if err := m.clearPending(p.Target); err != nil {
		return false, err
	}
	return false, nil
}

// rollBack undoes the files of a move whose ref did not move (the scratch
// index holds the new commit's) and deletes the lock. cause, which may be
// nil (the target moved meanwhile), is returned unless the roll back
// itself fails: then lock and record stay, so a plain git commit cannot
// record the half-moved files, and the next merge run tries again.
func (m *Merger) rollBack(ctx context.Context, p pending, abandon func() error, cause error) error {
	_, err := gitstate.GitEnvOut(ctx, p.Worktree, []string{"GIT_INDEX_FILE=" + p.scratchPath()}, nil, "read-tree", "-m", "-u", p.To, p.From)
	if err != nil {
		msg := fmt.Sprintf("%s was not moved, but the files of %s could not be put back to %s: %v; index.lock is left there so that no commit records them; run the merge again to retry",
			p.Target, p.Worktree, short(p.From), err)
		if cause != nil {
			return fmt.Errorf("%w; %s", cause, msg)
		}
		return errors.New(msg)
	}
	if err := abandon(); err != nil && cause == nil {
		return err
	}
	return cause
}

// fillLock replaces the content of the lock file with that of the index
// file at src, through the descriptor that created it (so its inode, the
// lock's identity, stays), and syncs it.
func fillLock(lk *os.File, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := lk.Truncate(0); err != nil {
		return err
	}
	if _, err := lk.WriteAt(data, 0); err != nil {
		return err
	}
	return lk.Sync()
}

// commitLock renames the lock over the index: git's commit of a lock file.
func commitLock(lk *os.File, p pending) error {
	if lk != nil {
		lk.Close()
	}
	if err := os.Rename(p.lockPath(), p.indexPath()); err != nil {
		return err
	}
	if d, err := os.Open(p.GitDir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// copyFile copies src to dst through a temporary file renamed over dst, so
// that a crash never leaves a torn dst (a torn scratch index would make
// every later roll back fail).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o666)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// indexHolds reports whether the index file at index holds to's version of
// every path that differs between from and to (paths the merge did not
// touch may hold the user's staged changes).
func indexHolds(ctx context.Context, wt, index, from, to string) (bool, error) {
	touched, err := gitstate.Git(ctx, wt, "diff", "--no-renames", "--name-only", "-z", from, to)
	if err != nil {
		return false, err
	}
	differ, err := gitstate.GitEnvOut(ctx, wt, []string{"GIT_INDEX_FILE=" + index}, nil,
		"diff-index", "--cached", "--no-renames", "--name-only", "-z", to)
	if err != nil {
		return false, err
	}
	set := map[string]bool{}
	for _, p := range strings.Split(differ, "\x00") {
		set[p] = p != ""
	}
	for _, p := range strings.Split(touched, "\x00") {
		if set[p] {
			return false, nil
		}
	}
	return true, nil
}

// finishSync finishes or undoes a worktree move that a merge run left
// under way (it crashed, or could not roll back), under the lease lock of
// token. It runs before a merge decides anything, so the new merge starts
// from a worktree that matches the target. The record is cleared only when
// the worktree's index really holds the target's tree in the paths the
// move touched (or the move is undone). owed reports that there was a
// record.
func (m *Merger) finishSync(ctx context.Context, target string, token uint64) (owed bool, err error) {
	data, err := statefile.ReadFile(m.pendingPath(target), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	var p pending
	if _, err := statefile.DecodeTOML(data, &p); err != nil {
		return true, &gitstate.UnreadableError{Path: m.pendingPath(target), Err: err}
	}
	if p.Worktree == "" || p.From == "" || p.To == "" {
		return true, &gitstate.UnreadableError{Path: m.pendingPath(target), Err: errors.New("worktree, from or to missing")}
	}
	if p.GitDir == "" {
		// A record of an earlier version, written before its ref update
		// and holding no lock: the worktree may still be at the old tree.
		if _, err := os.Stat(p.Worktree); err == nil {
			if p.GitDir, err = worktreeGitDir(ctx, p.Worktree); err != nil {
				return true, err
			}
		}
	}
	return true, m.Leases.WithToken(ctx, target, token, func() error { return m.recover(ctx, p) })
}

func (m *Merger) recover(ctx context.Context, p pending) error {
	cur, err := m.Repo.ResolveCommit(ctx, "refs/heads/"+p.Target)
	if err != nil {
		return err
	}
	ours := p.ours()
	abandon := func() error {
		p.removeScratch()
		if ours {
			if err := os.Remove(p.lockPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return m.clearPending(p.Target)
	}
	if _, err := os.Stat(p.Worktree); err != nil {
		// The worktree is gone: nothing to bring along. A lock of ours in
		// its git dir goes with the record.
		return abandon()
	}
	switch {
	case cur == p.To && ours:
		// The ref moved and the run stopped before renaming the lock: it
		// holds the new index if the run got as far as phase ready, which
		// it must have to move the ref; check rather than trust.
		okay, err := indexHolds(ctx, p.Worktree, p.lockPath(), p.From, p.To)
		if err != nil {
			return fmt.Errorf("finish the worktree move of %s in %s: %w", p.Target, p.Worktree, err)
		}
		if !okay {
			return fmt.Errorf("%s points at %s but %s (left by a merge that stopped) does not hold its tree; index.lock is left in place so no commit reverts the merge; run git -C %s reset --keep %s after removing it",
				p.Target, short(p.To), p.lockPath(), p.Worktree, short(p.To))
		}
		p.removeScratch()
		if err := commitLock(nil, p); err != nil {
			return fmt.Errorf("finish the worktree move of %s: %w", p.Target, err)
		}
		return m.clearPending(p.Target)
	case cur == p.To:
		// The lock was committed before the record was cleared, or someone
		// removed it. Either way the index must hold the new tree.
		okay, err := indexHolds(ctx, p.Worktree, p.indexPath(), p.From, p.To)
		if err != nil {
			return fmt.Errorf("finish the worktree move of %s in %s: %w", p.Target, p.Worktree, err)
		}
		if okay {
			return abandon()
		}
		return m.repairIndex(ctx, p)
	case ours:
		// The ref never moved (or someone else moved it): put the files
		// back and let go of the index. In phase ready the lock holds the
		// new index; in phase updating the scratch index does (or still
		// the old one, when read-tree was cut short: then the roll back
		// leaves what it wrote as local changes, never discarded).
		if p.Phase == phaseReady {
			if err := copyFile(p.lockPath(), p.scratchPath()); err != nil {
				return err
			}
		} else if _, err := os.Stat(p.scratchPath()); err != nil {
			return abandon() // read-tree never ran: the files are as they were
		}
		os.Remove(p.scratchPath() + ".lock")
		err := m.rollBack(ctx, p, abandon, nil)
		if err == nil {
			return nil
		}
		// The files cannot be put back. The ref never moved and the index
		// file was never replaced, so letting go of the lock is safe: no
		// commit can revert a merge that did not happen, and no local
		// change was ever overwritten. What the stopped merge wrote shows
		// as local changes, and this says so once.
		if aerr := abandon(); aerr != nil {
			return fmt.Errorf("%v; and removing index.lock: %w", err, aerr)
		}
		return fmt.Errorf("a merge into %s stopped while moving the files of %s and they could not all be put back (%v); %s was not moved, and git status there shows what that merge wrote: check it, then run the merge again",
			p.Target, p.Worktree, err, p.Target)
	}
	return abandon()
}

// repairIndex brings an index left at the old tree to the target's tree,
// under index.lock: files and index (read-tree -m -u) when the files are
// still at the old tree (a record of an earlier version, whose ref moved
// first), else index only (read-tree -m: the lock was removed by hand
// after a crash, the files already moved), touching no file, so whatever
// differs from the target shows as a local change.
func (m *Merger) repairIndex(ctx context.Context, p pending) error {
	lk, err := lockIndex(ctx, p.GitDir, p.Worktree, IndexLockWaitDefault)
	if err != nil {
		return fmt.Errorf("%s points at %s but the index of %s does not hold it: %w", p.Target, short(p.To), p.Worktree, err)
	}
	defer os.Remove(p.scratchPath())
	fail := func(err error) error {
		lk.Close()
		os.Remove(p.lockPath())
		return fmt.Errorf("%s points at %s but the index of %s does not hold it, and bringing it along failed: %w; run git -C %s reset --keep %s",
			p.Target, short(p.To), p.Worktree, err, p.Worktree, short(p.To))
	}
	if err := copyFile(p.indexPath(), p.scratchPath()); err != nil {
		return fail(err)
	}
	scratch := []string{"GIT_INDEX_FILE=" + p.scratchPath()}
	if _, err := gitstate.GitEnvOut(ctx, p.Worktree, scratch, nil, "read-tree", "-m", "-u", p.From, p.To); err != nil {
		// read-tree refused before touching anything: the scratch index
		// is still the copy.
		if _, err := gitstate.GitEnvOut(ctx, p.Worktree, scratch, nil, "read-tree", "-m", p.From, p.To); err != nil {
			return fail(err)
		}
	}
	if err := fillLock(lk, p.scratchPath()); err != nil {
		return fail(err)
	}
	if err := commitLock(lk, p); err != nil {
		return fail(err)
	}
	return m.clearPending(p.Target)
}

// DirtyError is a merge refused because the target's checked-out worktree
// has local changes in paths the merge changes. Nothing was written: the
// target, the worktree's files and its index are as they were.
type DirtyError struct {
	Target, Worktree string
	// Paths are the worktree's paths, relative to its top, whose local
	// change (staged, unstaged, or an untracked file) is in the merge's way.
	Paths []string
}

func (e *DirtyError) Error() string {
	return fmt.Sprintf("merge into %s: %v: %s has local changes in %s, which the merge changes; %s was not moved and nothing was touched; commit, stash or move them, then run the merge again (changes in other paths are kept)",
		e.Target, ErrDirtyWorktree, e.Worktree, listPaths(e.Paths, 10), e.Target)
}

func (e *DirtyError) Unwrap() error { return ErrDirtyWorktree }

// listPaths joins paths for a message, at most n of them.
func listPaths(paths []string, n int) string {
	if len(paths) <= n {
		return strings.Join(paths, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(paths[:n], ", "), len(paths)-n)
}

// blockingChanges lists the local changes of worktree wt (against index)
// that are in the way of moving it from old to new: a staged or unstaged
// change in, or an untracked file at, a path the two commits differ in, or
// one a directory of the other (a file where the merge needs a directory,
// and the reverse). It is asked only after read-tree refused, to name the
// paths; read-tree stops at the first.
func blockingChanges(ctx context.Context, wt, index, old, new string) ([]string, error) {
	touched, err := gitstate.Git(ctx, wt, "diff", "--no-renames", "--name-only", "-z", old, new)
	if err != nil {
		return nil, err
	}
	// --no-optional-locks: this runs while the merge holds index.lock.
	st, err := gitstate.GitEnvOut(ctx, wt, []string{"GIT_INDEX_FILE=" + index}, nil,
		"--no-optional-locks", "status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=all")
	if err != nil {
		return nil, err
	}
	changed := map[string]bool{}
	for _, p := range strings.Split(touched, "\x00") {
		if p != "" {
			changed[p] = true
		}
	}
	dirs := dirsOf(changed)
	var paths []string
	for _, e := range strings.Split(st, "\x00") {
		if len(e) < 4 {
			continue
		}
		path := e[3:]
		if inTheWay(path, changed, dirs) {
			paths = append(paths, path)
		}
	}
	sort.Strings(paths)
	return paths, nil
}

// inTheWay reports whether a local change at path meets a path the merge
// changes: the same path, a directory above one, or a file below one
// (dirs holds every directory of a changed path).
func inTheWay(path string, changed, dirs map[string]bool) bool {
	if changed[path] || dirs[path] {
		return true
	}
	for dir := path; ; {
		i := strings.LastIndexByte(dir, '/')
		if i < 0 {
			return false
		}
		dir = dir[:i]
		if changed[dir] {
			return true
		}
	}
}

// dirsOf returns every directory above a path of paths.
func dirsOf(paths map[string]bool) map[string]bool {
	dirs := map[string]bool{}
	for p := range paths {
		for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
			if dirs[p[:i]] {
				break
			}
			dirs[p[:i]] = true
		}
	}
	return dirs
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
