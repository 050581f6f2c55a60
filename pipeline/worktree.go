package pipeline

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// worktreeLockWait bounds the wait for the worktrees lock.
const worktreeLockWait = 5 * time.Minute

// WorktreePath is where the worktree of task goes: a directory under the
// configured worktrees dir, named after the task plus a hash so that tasks
// whose names differ only in unsafe bytes never share one. A relative
// worktrees dir is under the top of the main worktree; a bare repository
// has none, so it is under the directory that holds the repository (beside
// it, never inside the git dir). Where the main worktree exists but is not
// known (MainUnknown), EnsureWorktree refuses to create one.
func (e *Env) WorktreePath(task string) string {
	sum := sha256.Sum256([]byte(task))
	name := strings.NewReplacer("/", "-", " ", "-").Replace(task)
	if len(name) > 60 {
		name = name[:60]
	}
	return filepath.Join(e.worktreesBase(), name+"-"+hex.EncodeToString(sum[:4]))
}

// WorktreesDir is the directory task worktrees are made in (the configured
// worktrees dir, resolved).
func (e *Env) WorktreesDir() string { return e.worktreesBase() }

func (e *Env) worktreesBase() string {
	base := e.Config.Worktrees
	if filepath.IsAbs(base) {
		return base
	}
	top := e.Repo.MainWorktree
	if top == "" {
		top = filepath.Dir(e.Repo.CommonDir)
	}
	return filepath.Join(top, base)
}

// taskLockWait bounds the wait for a task's lock: gc holds it across one
// status check and one git worktree remove, a starting job across one
// worktree add and one process start.
const taskLockWait = 5 * time.Minute

// lockTask takes task's lock, which excludes a job of the task starting
// (EnsureWorktree until its command has started) and gc removing the
// task's worktree (DESIGN.md "Real repositories"). The lock file is named
// by a hash of the task, so any task name makes a valid file name.
func (e *Env) lockTask(ctx context.Context, task string) (unlock func(), err error) {
	lctx, cancel := context.WithTimeout(ctx, taskLockWait)
	defer cancel()
	sum := sha256.Sum256([]byte(task))
	unlock, err = statefile.Lock(lctx, e.Store.LockPath("task-"+hex.EncodeToString(sum[:8])))
	if err != nil {
		return nil, fmt.Errorf("task %q: %w", task, err)
	}
	return unlock, nil
}

// worktreeOf returns the worktree that has branch checked out, or "".
func (e *Env) worktreeOf(ctx context.Context, branch string) (string, error) {
	return e.Repo.WorktreeOf(branch)
}

// gitDir is where git commands about the repository as a whole run: the
// main worktree, or the common git dir when there is none (bare) or it is
// not known.
func (e *Env) gitDir() string {
	if e.Repo.MainWorktree != "" {
		return e.Repo.MainWorktree
	}
	return e.Repo.CommonDir
}

// MonitorDir is where a detached monitor started by this process runs (its
// -C): the worktree this process runs in, so that it opens the repository
// the way this process did (a --separate-git-dir repository's main
// worktree is known only from inside it), else the main worktree, else the
// common git dir.
func (e *Env) MonitorDir() string {
	if e.Repo.Worktree != "" {
		return e.Repo.Worktree
	}
	return e.gitDir()
}

// FindWorktree returns the worktree in which the job's branch is checked
// out, or "" if there is none.
func (e *Env) FindWorktree(ctx context.Context, j *gitstate.Job) (string, error) {
	return e.worktreeOf(ctx, j.Branch)
}

// EnsureWorktree returns a worktree with the job's branch checked out:
// the one that already has it (a later stage of the same task, or the
// user's own checkout), or a new linked worktree at WorktreePath, with the
// branch created from the target when it does not exist yet. The caller
// holds the task's lock (lockTask) from before this call until the job's
// command has started, and the job is already running: so gc, which
// re-checks under that lock that the task has no active job, never removes
// the worktree a job is starting in, and a job that waited for gc finds
// the worktree gone and makes it again.
func (e *Env) EnsureWorktree(ctx context.Context, j *gitstate.Job) (string, error) {
	// Held only across one git worktree add, but many monitors starting at
	// once queue behind it: a contended wait is not an error.
	lctx, cancel := context.WithTimeout(ctx, worktreeLockWait)
	defer cancel()
	unlock, err := statefile.Lock(lctx, e.Store.LockPath("worktrees"))
	if err != nil {
		return "", fmt.Errorf("worktree for %s: %w", j.Branch, err)
	}
	defer unlock()
	if wt, err := e.worktreeOf(ctx, j.Branch); err != nil || wt != "" {
		return wt, err
	}
	if e.Repo.MainUnknown && !filepath.IsAbs(e.Config.Worktrees) {
		return "", fmt.Errorf("worktree for %s: %w, and worktrees = %q is relative to it; run orch-hooks from the main worktree (dispatch from there), set worktrees to an absolute path, or record the main worktree with git config core.worktree <path>",
			j.Branch, gitstate.ErrMainWorktreeUnknown, e.Config.Worktrees)
	}
	path := e.WorktreePath(j.Task)
	if _, err := os.Stat(path); err == nil {
		return "", fmt.Errorf("worktree for %s: %s exists but does not have the branch checked out; move it away or run git worktree prune", j.Branch, path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("worktree for %s: %w", j.Branch, err)
	}
	e.excludeWorktrees()
	ref := "refs/heads/" + j.Branch
	if _, err := gitstate.Git(ctx, e.gitDir(), "rev-parse", "--verify", "--quiet", ref+"^{commit}"); err == nil {
		_, err = gitstate.Git(ctx, e.gitDir(), "worktree", "add", "--quiet", path, j.Branch)
		if err != nil {
			return "", fmt.Errorf("worktree for %s: %w", j.Branch, err)
		}
		return path, nil
	}
	if _, err := gitstate.Git(ctx, e.gitDir(), "rev-parse", "--verify", "--quiet", "refs/heads/"+j.Target+"^{commit}"); err != nil {
		return "", fmt.Errorf("worktree for %s: neither the branch nor the target branch %q exists; create one of them first", j.Branch, j.Target)
	}
	if _, err := gitstate.Git(ctx, e.gitDir(), "worktree", "add", "--quiet", "-b", j.Branch, path, "refs/heads/"+j.Target); err != nil {
		return "", fmt.Errorf("worktree for %s: %w", j.Branch, err)
	}
	return path, nil
}

// excludeWorktrees keeps job worktrees inside the main worktree out of its
// `git status`, by listing their directory in .git/info/exclude once.
func (e *Env) excludeWorktrees() {
	if e.Repo.MainWorktree == "" || filepath.IsAbs(e.Config.Worktrees) {
		return
	}
	rel := filepath.ToSlash(filepath.Clean(e.Config.Worktrees))
	if strings.HasPrefix(rel, "../") {
		return
	}
	pattern := "/" + rel + "/"
	path := filepath.Join(e.Repo.CommonDir, "info", "exclude")
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == pattern {
				f.Close()
				return
			}
		}
		f.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "\n# orch-hooks job worktrees\n%s\n", pattern)
}

// RemoveMergedWorktree removes the worktree of merge job j's task once j
// has ended done: a merged task's full checkout is otherwise kept until gc
// (7 days by default), and its branch cannot be deleted while it is checked
// out there. It decides under the task's lock, which a job's start holds
// across EnsureWorktree, and removes the worktree only when every one of
// these holds at that moment:
//
//   - [gc] keep_merged_worktrees is false;
//   - the worktree is this tool's (WorktreePath of the task) and has j's
//     branch checked out — a user's own checkout is never touched;
//   - no job of the task, or of its branch, is queued or running;
//   - the branch's tip is an ancestor of the target's: nothing on it is
//     unmerged;
//   - git status shows nothing uncommitted or untracked in it.
//
// Work is never lost: anything else keeps the worktree. The returned line
// says what happened, for a person (the job's log, run's stderr, the
// reaper's action); it is "" when there was nothing to say (no worktree,
// or the setting keeps it). The branch itself is never deleted.
func (e *Env) RemoveMergedWorktree(ctx context.Context, j *gitstate.Job) string {
	if e.Config.GC.KeepMergedWorktrees || j.Status != gitstate.Done {
		return ""
	}
	wt := e.WorktreePath(j.Task)
	if _, err := os.Lstat(wt); err != nil {
		return ""
	}
	kept := func(format string, args ...any) string {
		return fmt.Sprintf("worktree %s kept: ", wt) + fmt.Sprintf(format, args...)
	}
	unlock, err := e.lockTask(ctx, j.Task)
	if err != nil {
		return kept("%v; orch-hooks gc removes it later", err)
	}
	defer unlock()
	if have, err := e.worktreeOf(ctx, j.Branch); err != nil || have != wt {
		if err != nil {
			return kept("%v", err)
		}
		return "" // not the branch's checkout (moved, or removed already)
	}
	b, err := e.Repo.ResolveCommit(ctx, "refs/heads/"+j.Branch)
	if err != nil {
		return kept("%v", err)
	}
	t, err := e.Repo.ResolveCommit(ctx, "refs/heads/"+j.Target)
	if err != nil {
		return kept("%v", err)
	}
	if ok, err := e.Repo.IsAncestor(ctx, b, t); err != nil || !ok {
		if err != nil {
			return kept("%v", err)
		}
		return kept("%s has commits that are not in %s (%s)", j.Branch, j.Target, shortID(b))
	}
	st, active, err := e.worktreeInUse(ctx, wt, j.Task, map[string]bool{j.Branch: true})
	switch {
	case err != nil:
		return kept("%v; orch-hooks gc removes it later", err)
	case active != nil:
		return kept("job %s of the task is %s in it", active.ID, active.Status)
	case st != "":
		return kept("it has uncommitted changes (%s); commit or discard them, then git worktree remove %s", porcelainPaths(st, 3), wt)
	}
	if _, err := gitstate.Git(ctx, e.gitDir(), "worktree", "remove", wt); err != nil {
		return kept("%v", err)
	}
	return fmt.Sprintf("worktree %s removed: %s is merged into %s", wt, j.Branch, j.Target)
}

// porcelainPaths names up to max paths of git status --porcelain -z output,
// and how many more there are.
func porcelainPaths(z string, max int) string {
	var paths []string
	fields := strings.Split(strings.TrimRight(z, "\x00"), "\x00")
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if len(f) < 4 {
			continue
		}
		paths = append(paths, f[3:])
		if f[0] == 'R' || f[0] == 'C' {
			i++ // the rename's source follows
		}
	}
	if len(paths) > max {
		return strings.Join(paths[:max], ", ") + fmt.Sprintf(" and %d more", len(paths)-max)
	}
	return strings.Join(paths, ", ")
}

// WorktreesDisk is the disk that task worktrees hold: what du would say for
// the configured worktrees dir (allocated blocks, each inode counted once,
// symlinks not followed, other file systems included), and how many
// worktrees are in it. The objects a linked worktree uses live in the
// repository's git dir and are not counted. A dir that does not exist holds
// nothing. Entries that vanish during the walk (a worktree being removed)
// are skipped. The walk costs one lstat per file: measured at about 30 ms
// for a checkout of 15,000 files (see the commit that added it).
func (e *Env) WorktreesDisk() (bytes int64, worktrees int, err error) {
	base := e.worktreesBase()
	ents, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("worktrees dir %s: %w", base, err)
	}
	for _, ent := range ents {
		if ent.IsDir() {
			worktrees++
		}
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info() // lstat: WalkDir never follows a symlink
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			bytes += fi.Size()
			return nil
		}
		if st.Nlink > 1 && !fi.IsDir() {
			k := inode{uint64(st.Dev), uint64(st.Ino)}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		bytes += int64(st.Blocks) * 512
		return nil
	})
	if err != nil {
		return bytes, worktrees, fmt.Errorf("worktrees dir %s: %w", base, err)
	}
	return bytes, worktrees, nil
}

// DiskUsage is what task worktrees held when measured.
type DiskUsage struct {
	Bytes      int64     `json:"bytes"`
	Worktrees  int       `json:"worktrees"`
	Names      []string  `json:"names"` // the worktree dirs measured
	MeasuredAt time.Time `json:"measured_at"`
}

// diskCacheFile holds the last DiskUsage in the state dir.
const diskCacheFile = "worktrees-disk.json"

// WorktreesDiskCached is WorktreesDisk measured at most every maxAge: a walk
// of task worktrees costs one lstat per file (about 0.8 s of CPU for six
// checkouts of 11,500 files each), too much for every status. The last
// figure is kept in the state dir and used while it is younger than maxAge,
// the same worktrees are there, and no job has ended since (changedAfter:
// the newest end the caller knows of) — a job's end is when a worktree's
// size settles. A figure that cannot be saved is still returned.
func (e *Env) WorktreesDiskCached(maxAge time.Duration, changedAfter time.Time) (DiskUsage, error) {
	names, err := e.worktreeNames()
	if err != nil {
		return DiskUsage{}, err
	}
	if len(names) == 0 {
		return DiskUsage{Names: names, MeasuredAt: time.Now().UTC()}, nil
	}
	path := filepath.Join(e.Store.Dir(), diskCacheFile)
	var cached DiskUsage
	if b, err := statefile.ReadFile(path, 1<<20); err == nil && json.Unmarshal(b, &cached) == nil {
		age := time.Since(cached.MeasuredAt)
		if age >= 0 && age < maxAge && !changedAfter.After(cached.MeasuredAt) && slices.Equal(cached.Names, names) {
			return cached, nil
		}
	}
	now := time.Now().UTC()
	bytes, n, err := e.WorktreesDisk()
	if err != nil {
		return DiskUsage{}, err
	}
	u := DiskUsage{Bytes: bytes, Worktrees: n, Names: names, MeasuredAt: now}
	if b, err := json.Marshal(u); err == nil {
		statefile.Replace(path, b) // best effort: the figure stands without it
	}
	return u, nil
}

// worktreeNames lists the directories of the worktrees dir, sorted.
func (e *Env) worktreeNames() ([]string, error) {
	ents, err := os.ReadDir(e.worktreesBase())
	if errors.Is(err, fs.ErrNotExist) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("worktrees dir %s: %w", e.worktreesBase(), err)
	}
	names := []string{}
	for _, ent := range ents {
		if ent.IsDir() {
			names = append(names, ent.Name())
		}
	}
	return names, nil
}
