// Package hooks installs, chains and removes the git hooks through which
// every commit, merge, checkout and rewrite in any worktree makes a cheap
// reaper pass, and is what such a hook run does.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Names are the hooks install writes.
var Names = []string{"post-commit", "post-merge", "post-checkout", "post-rewrite"}

// Marker is on the second line of every hook script orch-hooks writes; a
// hook without it is someone else's.
const Marker = "# orch-hooks: managed hook"

// ChainedSuffix is appended to the name of a hook that was there before
// install: it is kept, byte for byte and mode included, and run first.
const ChainedSuffix = ".orch-hooks-chained"

// ErrForeignHook is returned (wrapped) when a hook is in the way that is
// neither ours nor chainable without --force.
var ErrForeignHook = errors.New("a hook that is not ours is in the way")

// Dir returns the hooks directory git really uses for the worktree at dir:
// `git rev-parse --git-path hooks` honours core.hooksPath, and its answer is
// shared by every worktree of the repository.
func Dir(ctx context.Context, dir string) (string, error) {
	out, err := gitstate.Git(ctx, dir, "rev-parse", "--git-path", "hooks")
	if err != nil {
		return "", fmt.Errorf("hooks directory: %w", err)
	}
	if !filepath.IsAbs(out) {
		out = filepath.Join(dir, out)
	}
	return filepath.Clean(out), nil
}

// BinEnv names the environment variable that, when set, is the orch-hooks
// a hook runs (a path, or a name looked up on PATH) in place of
// orch-hooks on PATH: for a binary kept off PATH. It is read when the
// hook runs, so it lives in the environment of whoever runs git, never in
// the script.
const BinEnv = "ORCH_HOOKS_BIN"

// Script is the hook script for name. It holds no path of this machine
// (the same bytes on every machine, so it is safe to commit in a tracked
// core.hooksPath): it runs $ORCH_HOOKS_BIN when that is set, else
// orch-hooks found on PATH. When there is none, the hook does no pass: it
// prints one line on stderr saying what is missing and the fix, and exits
// with the chained hook's status (0 without one), so git goes on. With
// skipNotDue (the hooks dir is the repository's own <git-dir>/hooks, so
// the state dir is ../orch from it) the script first reads the due file
// (DueFileName) with shell builtins only and exits, without starting the
// binary, while no pass is due; any doubt (a field that does not match, a
// shell without test -nt, no /proc, a time namespace whose offset shifts
// /proc/uptime) starts the binary, which decides. Finding the binary uses
// builtins only (command -v, test), so the fast path still starts no
// process.
func Script(name string, skipNotDue bool) []byte {
	skip := ""
	if skipNotDue {
		skip = `		# No pass due (the last one is younger than reaper.interval_s and
		# orch.toml has not changed since): known from .git/orch/` + DueFileName + `
		# without starting a process.
		due="${0%/*}/../orch/` + DueFileName + `"
		if [ -f "$due" ] && { read -r v _ _ _ boot up ivl cfg; } 2>/dev/null <"$due" &&
			read -r nowboot 2>/dev/null </proc/sys/kernel/random/boot_id &&
			read -r nowup _ 2>/dev/null </proc/uptime &&
			{ ! [ -e /proc/self/timens_offsets ] ||
				{ read -r _ _ _ && read -r _ bs bn && [ "$bs" = 0 ] && [ "$bn" = 0 ]; } 2>/dev/null </proc/self/timens_offsets; } &&
			[ "$v" = v2 ] && [ "$boot" = "$nowboot" ] && [ "$ivl" = "x${ORCH_REAPER_INTERVAL_S-}" ] &&
			[ -f "$cfg" ] && [ "$due" -nt "$cfg" ] 2>/dev/null && [ "${nowup%.*}" -lt "$up" ] 2>/dev/null; then
			exit $status
		fi
`
	}
	return []byte(`#!/bin/sh
` + Marker + ` (` + name + `), written by orch-hooks install; orch-hooks uninstall removes it.
# It runs orch-hooks from PATH, or $` + BinEnv + ` when set, and holds no path
# of this machine: it is the same on every machine, so it can be committed.
# A hook that was here before is kept as ` + name + ChainedSuffix + ` and runs first,
# with the same arguments and input; its exit status is this hook's.
status=0
chained="${0%/*}/` + name + ChainedSuffix + `"
if [ -x "$chained" ]; then
	"$chained" "$@"
	status=$?
fi
if [ "${ORCH_HOOKS:-1}" != 0 ]; then
	bin=${` + BinEnv + `:-orch-hooks}
	case $bin in
	*/*) [ -f "$bin" ] && [ -x "$bin" ] ;;
	*) command -v "$bin" >/dev/null 2>&1 ;;
	esac
	if [ $? = 0 ]; then
` + skip + `		"$bin" hook ` + name + ` "$@" </dev/null
	elif [ -n "${` + BinEnv + `-}" ]; then
		printf 'orch-hooks: %s hook skipped: ` + BinEnv + `=%s names no executable (set it to the path of orch-hooks, or unset it to use orch-hooks on PATH)\n' ` + name + ` "$bin" >&2
	else
		printf 'orch-hooks: %s hook skipped: orch-hooks is not on PATH (put its directory on PATH, or set ` + BinEnv + ` to its path; ORCH_HOOKS=0 turns the hooks off)\n' ` + name + ` >&2
	fi
fi
exit $status
`)
}

// ownHooksDir reports whether dir is a repository's own <git-dir>/hooks
// (not a core.hooksPath elsewhere, which other repositories may share).
func ownHooksDir(dir string) bool {
	if filepath.Base(dir) != "hooks" {
		return false
	}
	gitDir := filepath.Dir(dir)
	for _, name := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(gitDir, name)); err != nil {
			return false
		}
	}
	return true
}

// IsOurs reports whether the hook file content was written by orch-hooks.
func IsOurs(content []byte) bool {
	lines := bytes.SplitN(content, []byte("\n"), 3)
	return len(lines) >= 2 && bytes.HasPrefix(lines[1], []byte(Marker))
}

// Change is one thing Install or Uninstall did (or found done).
type Change struct {
	Hook   string
	Action string // "installed", "updated", "chained", "unchanged", "removed", "restored", "kept"
}

// Install writes the hooks into dir. A foreign hook is moved aside to
// <name>.orch-hooks-chained (a rename: bytes and mode kept) and run first
// by ours. Installing twice changes nothing. A hook of ours that differs
// from Script (an older version's, such as one naming the binary by an
// absolute path, or one whose mode was changed) is replaced: "updated". A
// foreign hook that would replace an existing chained one is refused
// unless force, which then replaces the foreign hook and keeps the chained
// one as it was.
func Install(dir string, force bool) ([]Change, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install hooks: %w", err)
	}
	var changes []Change
	skipNotDue := ownHooksDir(dir)
	for _, name := range Names {
		c, err := installHook(dir, name, Script(name, skipNotDue), force, "install --force")
		if err != nil {
			return changes, err
		}
		changes = append(changes, c)
	}
	return changes, statefile.SyncDir(dir)
}

func writeHook(path string, script []byte) error {
	if err := statefile.ReplaceMode(path, script, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", filepath.Base(path), err)
	}
	return nil
}

// Uninstall removes our hooks from dir and puts back the ones they chained,
// exactly as they were. Hooks that are not ours are left alone.
// The server hook (install --server) is removed the same way; a foreign
// pre-receive is not reported, since install never touches it.
func Uninstall(dir string) ([]Change, error) {
	var changes []Change
	for _, name := range append(append([]string(nil), Names...), ServerHook) {
		path := filepath.Join(dir, name)
		chained := path + ChainedSuffix
		cur, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return changes, fmt.Errorf("uninstall %s: %w", name, err)
		case !IsOurs(cur) && name == ServerHook:
			continue
		case !IsOurs(cur):
			changes = append(changes, Change{name, "kept"})
			continue
		default:
			if err := os.Remove(path); err != nil {
				return changes, fmt.Errorf("uninstall %s: %w", name, err)
			}
			changes = append(changes, Change{name, "removed"})
		}
		if _, err := os.Lstat(chained); err == nil {
			if _, err := os.Lstat(path); err == nil {
				continue // a foreign hook took the place: leave both
			}
			if err := os.Rename(chained, path); err != nil {
				return changes, fmt.Errorf("uninstall %s: restore the chained hook: %w", name, err)
			}
			changes = append(changes, Change{name, "restored"})
		}
	}
	return changes, nil
}

// Shared describes a hooks dir that git tracks, or could: one inside the
// worktree (a core.hooksPath such as .githooks), not ignored, not under
// the git dir.
type Shared struct {
	// Dir is the hooks dir relative to the top of the worktree.
	Dir string
	// Tracked is true when git tracks files in Dir (git ls-files).
	Tracked bool
	// Uncommitted are our hook files (the hooks and the chained ones) that
	// differ from what is committed, relative to the top of the worktree:
	// modified, new or removed. These are what to commit so that every
	// clone runs the same hooks.
	Uncommitted []string
}

// SharedDir reports whether dir, the hooks dir of the worktree whose top
// is top, lies inside that worktree where git sees files, and what of ours
// in it is not committed. It returns nil, nil for a hooks dir git does not
// see: outside the worktree, under .git, or ignored with nothing tracked.
// It reads only (git --no-optional-locks: no index refresh).
func SharedDir(ctx context.Context, top, dir string) (*Shared, error) {
	if top == "" {
		return nil, nil // a bare repository: no worktree to commit from
	}
	rel, err := filepath.Rel(top, dir)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return nil, nil
	}
	rel = filepath.ToSlash(rel)
	ls, err := gitstate.GitBytes(ctx, top, nil, "--no-optional-locks", "ls-files", "-z", "--", ":(literal)"+rel)
	if err != nil {
		return nil, fmt.Errorf("hooks dir %s: %w", dir, err)
	}
	args := []string{"--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--"}
	for _, name := range Names {
		args = append(args, ":(literal)"+rel+"/"+name, ":(literal)"+rel+"/"+name+ChainedSuffix)
	}
	st, err := gitstate.GitBytes(ctx, top, nil, args...)
	if err != nil {
		return nil, fmt.Errorf("hooks dir %s: %w", dir, err)
	}
	s := &Shared{Dir: rel, Tracked: len(ls) > 0}
	entries := strings.Split(string(st), "\x00")
	for i := 0; i < len(entries); i++ {
		e := entries[i]
		if len(e) < 4 {
			continue
		}
		s.Uncommitted = append(s.Uncommitted, e[3:])
		if e[0] == 'R' || e[0] == 'C' {
			i++ // -z: the source path of a rename or copy follows
		}
	}
	sort.Strings(s.Uncommitted)
	if !s.Tracked && len(s.Uncommitted) == 0 {
		return nil, nil // under .git, or ignored: git does not see it
	}
	return s, nil
}

// installHook puts script in place as hook name in dir: "installed" where
// there was none, "unchanged" or "updated" over ours, "chained" over a
// foreign one (kept as name+ChainedSuffix and run first). A foreign hook
// over an existing chained one is refused unless force; forceCmd is the
// command the error tells the user to run then.
func installHook(dir, name string, script []byte, force bool, forceCmd string) (Change, error) {
	path := filepath.Join(dir, name)
	cur, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := writeHook(path, script); err != nil {
			return Change{}, err
		}
		return Change{name, "installed"}, nil
	case err != nil:
		return Change{}, fmt.Errorf("install %s: %w", name, err)
	case IsOurs(cur):
		if fi, _ := os.Stat(path); bytes.Equal(cur, script) && fi.Mode().Perm() == 0o755 {
			return Change{name, "unchanged"}, nil
		}
		if err := writeHook(path, script); err != nil {
			return Change{}, err
		}
		return Change{name, "updated"}, nil
	}
	chained := path + ChainedSuffix
	if _, err := os.Lstat(chained); err == nil {
		if !force {
			return Change{}, fmt.Errorf("install %s: %w: %s replaced our hook after install, and %s is already kept; move one of them away, or run %s to replace %s",
				name, ErrForeignHook, path, chained, forceCmd, path)
		}
	} else if err := os.Rename(path, chained); err != nil {
		return Change{}, fmt.Errorf("install %s: keep the existing hook: %w", name, err)
	}
	if err := writeHook(path, script); err != nil {
		return Change{}, err
	}
	return Change{name, "chained"}, nil
}
