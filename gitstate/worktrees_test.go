package gitstate

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// layout is a repository built in one of the shapes git allows, with main
// checked out in its main worktree (or, bare, in a linked one) and feat/x
// in a linked worktree.
type layout struct {
	main   string // top of the worktree that has main checked out
	linked string // top of the linked worktree of feat/x
	common string // the common git dir
	bare   bool   // no main worktree at all
	// hidden: git records nowhere where the main worktree is, so it is
	// known only when opened there.
	hidden bool
}

func buildLayout(t *testing.T, name string) (layout, *gittest.Repo) {
	r := gittest.New(t) // for its git environment; its repo is the source of clones
	base := filepath.Dir(r.Dir)
	l := layout{main: filepath.Join(base, "top"), linked: filepath.Join(base, "linked")}
	switch name {
	case "normal":
		l.main, l.common = r.Dir, filepath.Join(r.Dir, ".git")
	case "separate-git-dir":
		l.common = filepath.Join(base, "store", "repo.gitdir")
		os.MkdirAll(filepath.Dir(l.common), 0o755)
		r.Git(base, "init", "-q", "-b", "main", "--separate-git-dir", l.common, l.main)
		l.hidden = true
	case "git-symlink":
		l.common = filepath.Join(base, "store", "repo.gitdir")
		r.Git(base, "init", "-q", "--bare", "-b", "main", l.common)
		os.MkdirAll(l.main, 0o755)
		if err := os.Symlink(l.common, filepath.Join(l.main, ".git")); err != nil {
			t.Fatal(err)
		}
		r.Git(l.main, "config", "core.bare", "false")
		l.hidden = true
	case "submodule":
		outer := filepath.Join(base, "outer")
		r.Git(base, "init", "-q", "-b", "main", outer)
		r.Git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "-b", "main", r.Dir, "sub")
		l.main, l.common = filepath.Join(outer, "sub"), filepath.Join(outer, ".git", "modules", "sub")
	case "bare":
		l.common = filepath.Join(base, "repo.git")
		r.Git(base, "clone", "-q", "--bare", r.Dir, l.common)
		r.Git(l.common, "worktree", "add", "-q", l.main, "main")
		l.bare = true
	default:
		t.Fatalf("unknown layout %s", name)
	}
	if name != "normal" && name != "submodule" && name != "bare" {
		r.Git(l.main, "commit", "-q", "--allow-empty", "-m", "initial")
	}
	r.Git(l.main, "worktree", "add", "-q", "-b", "feat/x", l.linked)
	return l, r
}

var layouts = []string{"normal", "separate-git-dir", "git-symlink", "submodule", "bare"}

// porcelainWorktree is one entry of git worktree list --porcelain.
type porcelainWorktree struct {
	path, branch   string
	bare, prunable bool
}

func gitWorktreeList(t *testing.T, r *gittest.Repo, dir string) []porcelainWorktree {
	var out []porcelainWorktree
	for _, block := range strings.Split(r.Git(dir, "worktree", "list", "--porcelain"), "\n\n") {
		var w porcelainWorktree
		for _, line := range strings.Split(block, "\n") {
			k, v, _ := strings.Cut(line, " ")
			switch k {
			case "worktree":
				w.path = v
			case "branch":
				w.branch = strings.TrimPrefix(v, "refs/heads/")
			case "bare":
				w.bare = true
			case "prunable":
				w.prunable = true
			}
		}
		out = append(out, w)
	}
	return out
}

// Worktrees and WorktreeOf, read from files, agree with git in every
// layout, opened from every place: the linked worktrees and the bare entry
// as git worktree list --porcelain reports them; the main worktree as
// git rev-parse --show-toplevel reports it there (git worktree list names
// the git dir instead when the git dir is not <top>/.git, a limitation of
// git's own listing). Where git records the main worktree nowhere, it is
// known when opened there and refused (not missed) elsewhere.
func TestWorktreesMatchGit(t *testing.T) {
	for _, name := range layouts {
		t.Run(name, func(t *testing.T) {
			os.Unsetenv("GIT_DIR")
			l, r := buildLayout(t, name)
			// A prunable worktree: listed by git, not by us.
			gone := filepath.Join(filepath.Dir(l.linked), "gone")
			r.Git(l.linked, "worktree", "add", "-q", "-b", "feat/gone", gone)
			os.RemoveAll(gone)
			git := gitWorktreeList(t, r, l.linked)
			var wantLinked []string
			for _, w := range git[1:] {
				if !w.prunable {
					wantLinked = append(wantLinked, w.path+" "+w.branch)
				}
			}
			if git[0].bare != l.bare {
				t.Fatalf("git says bare=%v for layout %s", git[0].bare, name)
			}
			top := ""
			if !l.bare {
				top = r.Git(l.main, "rev-parse", "--show-toplevel")
			}
			// As git runs a hook in the main worktree: GIT_DIR set, the
			// current directory the top.
			asHook := l.main + " (as a hook, GIT_DIR set)"
			for _, from := range []string{l.main, l.linked, l.common, asHook} {
				os.Unsetenv("GIT_DIR")
				dir := from
				if from == asHook {
					dir = l.main
					t.Setenv("GIT_DIR", r.Git(l.main, "rev-parse", "--absolute-git-dir"))
				}
				repo, err := Open(dir)
				os.Unsetenv("GIT_DIR")
				if err != nil {
					t.Fatalf("Open(%s): %v", from, err)
				}
				wts, err := repo.Worktrees()
				if err != nil {
					t.Fatal(err)
				}
				var gotLinked []string
				for _, w := range wts {
					if !w.Main {
						gotLinked = append(gotLinked, w.Path+" "+w.Branch)
					}
				}
				sort.Strings(gotLinked)
				sort.Strings(wantLinked)
				if strings.Join(gotLinked, "\n") != strings.Join(wantLinked, "\n") {
					t.Errorf("from %s: linked worktrees\n%s\ngit says\n%s", from, strings.Join(gotLinked, "\n"), strings.Join(wantLinked, "\n"))
				}
				known := !l.hidden || from == l.main || from == asHook
				switch {
				case l.bare:
					if repo.MainWorktree != "" || repo.MainUnknown {
						t.Errorf("from %s: bare, yet MainWorktree = %q, MainUnknown = %v", from, repo.MainWorktree, repo.MainUnknown)
					}
				case known:
					if repo.MainWorktree != top || repo.MainUnknown {
						t.Errorf("from %s: MainWorktree = %q (unknown %v), git says %s", from, repo.MainWorktree, repo.MainUnknown, top)
					}
				default:
					if repo.MainWorktree != "" || !repo.MainUnknown {
						t.Errorf("from %s: MainWorktree = %q (unknown %v), want it unknown", from, repo.MainWorktree, repo.MainUnknown)
					}
				}
				got, err := repo.WorktreeOf("main")
				switch {
				case known && (err != nil || got != l.main):
					t.Errorf("from %s: WorktreeOf(main) = %q, %v; want %s", from, got, err, l.main)
				case !known && !errors.Is(err, ErrMainWorktreeUnknown):
					t.Errorf("from %s: WorktreeOf(main) = %q, %v; want ErrMainWorktreeUnknown", from, got, err)
				}
				if got, err := repo.WorktreeOf("feat/x"); err != nil || got != l.linked {
					t.Errorf("from %s: WorktreeOf(feat/x) = %q, %v; want %s", from, got, err, l.linked)
				}
				if got, err := repo.WorktreeOf("feat/gone"); err != nil || got != "" {
					t.Errorf("from %s: WorktreeOf(feat/gone) = %q, %v; want none", from, got, err)
				}
			}
		})
	}
}

func TestParseCoreConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := "[core]\n\tbare = false\n\tworktree = \"../a b\" # comment\n[core \"sub\"]\n\tworktree = nope\n[Extensions]\n\tworktreeConfig\n"
	os.WriteFile(filepath.Join(dir, "config"), []byte(cfg), 0o644)
	os.WriteFile(filepath.Join(dir, "config.worktree"), []byte("[core]\n\tBare = yes\n"), 0o644)
	core := readCoreConfig(dir)
	if core["worktree"] != "../a b" || core["bare"] != "yes" {
		t.Fatalf("core = %q", core)
	}
}
