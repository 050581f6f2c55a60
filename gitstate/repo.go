// Package gitstate is the repository as orch-hooks sees it: where it is (from
// any worktree), where the shared state lives, the job store, and the graph
// questions the pipeline asks.
package gitstate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// ErrNotRepository is returned (wrapped) by Open outside a git repository.
var ErrNotRepository = errors.New("not a git repository")

// Repo is an opened repository. Opening reads a few small files and runs no
// git process, because hooks open the repository on every commit.
type Repo struct {
	// Worktree is the top of the worktree Open was called in (empty for a
	// bare repository).
	Worktree string
	// GitDir is that worktree's git dir (for a linked worktree,
	// <common>/worktrees/<name>).
	GitDir string
	// CommonDir is the git dir shared by every worktree.
	CommonDir string
	// MainWorktree is the top of the main worktree: where orch.toml and
	// job worktrees live. It is empty for a bare repository, and for a
	// repository whose main worktree git itself does not record (a
	// --separate-git-dir repository opened from elsewhere than its main
	// worktree, without core.worktree): MainUnknown tells the two apart.
	MainWorktree string
	// MainUnknown is true when the repository has a main worktree
	// (core.bare is not true) whose location no record names.
	MainUnknown bool

	graphOnce sync.Once
	graph     *commitGraph // nil: no commit-graph
}

// StateDirName is the directory under the common git dir that holds all
// orch-hooks state.
const StateDirName = "orch"

// StateDir is <common-git-dir>/orch.
func (r *Repo) StateDir() string { return filepath.Join(r.CommonDir, StateDirName) }

// Open finds the repository containing dir, the way git does: the nearest
// ancestor with a .git directory, or a .git file naming the git dir of a
// linked worktree, or a bare repository. GIT_DIR, when set, wins.
func Open(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", dir, err)
	}
	if gd := os.Getenv("GIT_DIR"); gd != "" {
		if !filepath.IsAbs(gd) {
			gd = filepath.Join(abs, gd)
		}
		top := os.Getenv("GIT_WORK_TREE")
		if top != "" && !filepath.IsAbs(top) {
			top = filepath.Join(abs, top)
		}
		if top == "" {
			top = gitDirWorktree(gd, abs)
		}
		return fromGitDir(top, gd)
	}
	for d := abs; ; {
		dotgit := filepath.Join(d, ".git")
		fi, err := os.Stat(dotgit)
		switch {
		case err == nil && fi.IsDir():
			return fromGitDir(d, dotgit)
		case err == nil:
			gd, err := readGitFile(dotgit)
			if err != nil {
				return nil, err
			}
			return fromGitDir(d, gd)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("open repository at %s: %w", d, err)
		}
		if isGitDir(d) {
			return fromGitDir("", d)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return nil, fmt.Errorf("%s: %w (or any parent up to /); run inside a repository or pass -C DIR", abs, ErrNotRepository)
		}
		d = parent
	}
}

// gitDirWorktree is the worktree git uses when GIT_DIR=gd is set without
// GIT_WORK_TREE (as git sets it for hooks), in directory cwd: for the
// common git dir, core.worktree when set and none when core.bare is true;
// otherwise (and always for a linked worktree's git dir, where git ignores
// both) the current directory.
func gitDirWorktree(gd, cwd string) string {
	if _, err := os.Stat(filepath.Join(gd, "commondir")); err == nil {
		return cwd
	}
	core := readCoreConfig(gd)
	if wt := core["worktree"]; wt != "" {
		if !filepath.IsAbs(wt) {
			wt = filepath.Join(gd, wt)
		}
		return filepath.Clean(wt)
	}
	if b, ok := core["bare"]; ok && gitBool(b) {
		return ""
	}
	return cwd
}

// readGitFile reads a linked worktree's ".git" file: "gitdir: <path>".
func readGitFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	gd, ok := strings.CutPrefix(s, "gitdir:")
	if !ok {
		return "", fmt.Errorf("%s: %w: the file does not start with \"gitdir:\"", path, ErrNotRepository)
	}
	gd = strings.TrimSpace(gd)
	if !filepath.IsAbs(gd) {
		gd = filepath.Join(filepath.Dir(path), gd)
	}
	return gd, nil
}

func isGitDir(d string) bool {
	for _, name := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(d, name)); err != nil {
			return false
		}
	}
	return true
}

func fromGitDir(top, gitDir string) (*Repo, error) {
	gitDir = filepath.Clean(gitDir)
	if !isGitDir(gitDir) && !isLinkedGitDir(gitDir) {
		return nil, fmt.Errorf("%s: %w: no HEAD, objects and refs there", gitDir, ErrNotRepository)
	}
	common := gitDir
	if b, err := os.ReadFile(filepath.Join(gitDir, "commondir")); err == nil {
		c := strings.TrimSpace(string(b))
		if !filepath.IsAbs(c) {
			c = filepath.Join(gitDir, c)
		}
		common = filepath.Clean(c)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(gitDir, "commondir"), err)
	}
	if r, err := filepath.EvalSymlinks(common); err == nil {
		common = r
	}
	if top != "" {
		if r, err := filepath.EvalSymlinks(top); err == nil {
			top = r
		}
	}
	main, unknown := findMainWorktree(top, gitDir, common)
	r := &Repo{Worktree: top, GitDir: gitDir, CommonDir: common, MainWorktree: main, MainUnknown: unknown}
	if err := r.checkOwnership(); err != nil {
		return nil, err
	}
	return r, nil
}

// A linked worktree's git dir has HEAD and commondir but no objects or refs
// of its own.
func isLinkedGitDir(d string) bool {
	_, err1 := os.Stat(filepath.Join(d, "HEAD"))
	_, err2 := os.Stat(filepath.Join(d, "commondir"))
	return err1 == nil && err2 == nil
}
