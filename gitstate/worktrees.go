package gitstate

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrMainWorktreeUnknown is returned (wrapped) when a branch is checked out
// in the main worktree of a repository that does not record where that
// worktree is: a --separate-git-dir repository (or a .git symlink to a git
// dir of another name) seen from a linked worktree or the git dir itself.
// git keeps no record of it either (git worktree list names the git dir).
var ErrMainWorktreeUnknown = errors.New("the main worktree's location is not recorded")

// WorktreeInfo is one worktree as git records it.
type WorktreeInfo struct {
	// Path is the top of the worktree.
	Path string
	// GitDir is its git dir: the common dir for the main worktree,
	// <common>/worktrees/<name> for a linked one.
	GitDir string
	// Branch is the branch checked out there (without refs/heads/), or ""
	// when HEAD is detached or unreadable.
	Branch string
	// Main is true for the main worktree.
	Main bool
}

// Worktrees lists the repository's worktrees from git's own files, without
// a git process: the main worktree first (when the repository has one whose
// location is known: see MainWorktree), then each linked worktree of
// <common>/worktrees/<name> whose directory (its gitdir file, minus
// "/.git") still exists. It is what `git worktree list --porcelain`
// reports, except that git names the common dir as the main worktree of a
// repository whose git dir is not "<top>/.git" (separate git dir,
// submodule, .git symlink), where this names the real one.
func (r *Repo) Worktrees() ([]WorktreeInfo, error) {
	var out []WorktreeInfo
	if r.MainWorktree != "" {
		out = append(out, WorktreeInfo{Path: r.MainWorktree, GitDir: r.CommonDir, Branch: headBranch(r.CommonDir), Main: true})
	}
	dir := filepath.Join(r.CommonDir, "worktrees")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("list worktrees: %w", err)
	}
	for _, e := range ents {
		gd := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(filepath.Join(gd, "gitdir"))
		if err != nil {
			continue // not a worktree admin dir, or one being created
		}
		p := strings.TrimSpace(string(b))
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			// worktree.useRelativePaths: relative to the admin dir.
			p = filepath.Join(gd, p)
		}
		top := filepath.Dir(filepath.Clean(p))
		if _, err := os.Stat(top); err != nil {
			continue // prunable: its directory is gone
		}
		if rp, err := filepath.EvalSymlinks(top); err == nil {
			top = rp
		}
		out = append(out, WorktreeInfo{Path: top, GitDir: gd, Branch: headBranch(gd)})
	}
	return out, nil
}

// headBranch is the branch HEAD in gitDir names, or "".
func headBranch(gitDir string) string {
	b, err := os.ReadFile(filepath.Join(gitDir, "HEAD"))
	if err != nil {
		return ""
	}
	name, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "ref: refs/heads/")
	if !ok {
		return ""
	}
	return name
}

// WorktreeOf returns the top of the worktree that has branch checked out,
// or "" when none has, from the worktrees' HEAD files (no git process).
// Worktrees whose directory is gone (prunable) do not count. When the
// branch is checked out in a main worktree whose location nothing records
// (MainUnknown), it returns ErrMainWorktreeUnknown rather than "", so that
// a caller never moves that branch without its worktree.
func (r *Repo) WorktreeOf(branch string) (string, error) {
	if r.MainUnknown && headBranch(r.CommonDir) == branch {
		return "", fmt.Errorf("%s is checked out in the main worktree of %s, and %w (a separate git dir seen from another worktree); run orch-hooks in that worktree, or record it with git config core.worktree <path-of-that-worktree>",
			branch, r.CommonDir, ErrMainWorktreeUnknown)
	}
	wts, err := r.Worktrees()
	for _, w := range wts {
		if w.Branch == branch {
			return w.Path, nil
		}
	}
	return "", err
}

// findMainWorktree finds the top of the main worktree of the repository
// whose common dir is common, opened in worktree top (empty: in a git dir)
// with git dir gitDir, from git's records, in git's order:
//
//   - core.worktree in the common config (a submodule's git dir under
//     .git/modules has it), relative to the git dir;
//   - none when core.bare is true;
//   - top, when it was opened in the main worktree (its git dir is the
//     common dir: found through its .git dir, file or symlink);
//   - the common dir's parent when that parent's .git (a directory, a
//     symlink or a "gitdir:" file) is the common dir.
//
// Otherwise the main worktree exists but nothing says where: unknown.
func findMainWorktree(top, gitDir, common string) (main string, unknown bool) {
	core := readCoreConfig(common)
	if wt, ok := core["worktree"]; ok && wt != "" {
		if !filepath.IsAbs(wt) {
			wt = filepath.Join(common, wt)
		}
		wt = filepath.Clean(wt)
		if rp, err := filepath.EvalSymlinks(wt); err == nil {
			wt = rp
		}
		return wt, false
	}
	if b, ok := core["bare"]; ok && gitBool(b) {
		return "", false
	}
	if top != "" && sameFile(gitDir, common) {
		return top, false
	}
	if parent := filepath.Dir(common); dotGitIs(parent, common) {
		return parent, false
	}
	return "", true
}

// dotGitIs reports whether dir/.git leads to the git dir gd: it is gd
// itself, a symlink to it, or a "gitdir:" file naming it.
func dotGitIs(dir, gd string) bool {
	dotgit := filepath.Join(dir, ".git")
	fi, err := os.Stat(dotgit)
	if err != nil {
		return false
	}
	if fi.IsDir() {
		return sameFile(dotgit, gd)
	}
	named, err := readGitFile(dotgit)
	return err == nil && sameFile(named, gd)
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// readCoreConfig reads the [core] keys (lower-cased) of the repository's
// config file, and of config.worktree (the main worktree's own, which wins)
// when extensions.worktreeConfig is on. It understands what git writes:
// sections, "key = value", comments, double quotes and backslash escapes.
// An unreadable file reads as empty: git would refuse it and say why.
func readCoreConfig(common string) map[string]string {
	core := map[string]string{}
	ext := map[string]string{}
	parseConfig(filepath.Join(common, "config"), map[string]map[string]string{"core": core, "extensions": ext})
	if v, ok := ext["worktreeconfig"]; ok && gitBool(v) {
		parseConfig(filepath.Join(common, "config.worktree"), map[string]map[string]string{"core": core})
	}
	return core
}

// parseConfig sets, for each section named in into (without subsection),
// the last value of each key.
func parseConfig(path string, into map[string]map[string]string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	var cur map[string]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			end := strings.IndexByte(line, ']')
			if end < 0 {
				cur = nil
				continue
			}
			name := strings.TrimSpace(line[1:end])
			if strings.ContainsAny(name, " \t\".") {
				cur = nil // a subsection: not one of ours
			} else {
				cur = into[strings.ToLower(name)]
			}
			line = strings.TrimSpace(line[end+1:])
			if line == "" {
				continue
			}
		}
		if cur == nil || line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, hasValue := strings.Cut(line, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !hasValue {
			cur[k] = "true" // "key" alone is a boolean true
			continue
		}
		cur[k] = configValue(v)
	}
}

// configValue decodes a value: quotes removed, escapes applied, an
// unquoted comment dropped, surrounding unquoted space trimmed.
func configValue(v string) string {
	var b strings.Builder
	quoted := false
	pendingSpace := ""
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"':
			quoted = !quoted
		case c == '\\' && i+1 < len(v):
			i++
			b.WriteString(pendingSpace)
			pendingSpace = ""
			switch v[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'b':
				s := b.String()
				b.Reset()
				if len(s) > 0 {
					b.WriteString(s[:len(s)-1])
				}
			default:
				b.WriteByte(v[i])
			}
		case !quoted && (c == '#' || c == ';'):
			return strings.TrimLeft(b.String(), " \t")
		case !quoted && (c == ' ' || c == '\t'):
			pendingSpace += string(c)
		default:
			b.WriteString(pendingSpace)
			pendingSpace = ""
			b.WriteByte(c)
		}
	}
	return strings.TrimLeft(b.String(), " \t")
}

// gitBool is git's reading of a boolean value.
func gitBool(v string) bool {
	switch strings.ToLower(v) {
	case "true", "yes", "on":
		return true
	case "false", "no", "off", "":
		return false
	}
	n, err := strconv.Atoi(v)
	return err == nil && n != 0
}
