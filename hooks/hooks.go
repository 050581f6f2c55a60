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

// Script is the hook script for name, calling the binary at exe. If exe is
// gone, the hook does no pass: it prints one line on stderr naming exe
// and, when there is one, the orch-hooks on PATH that it did not run (an
// unknown build must not act on the state silently), and exits with the
// chained hook's status (0 without one), so git goes on. With
// skipNotDue (the hooks dir is the repository's own <git-dir>/hooks, so
// the state dir is ../orch from it) the script first reads the due file
// (DueFileName) with shell builtins only and exits, without starting the
// binary, while no pass is due; any doubt (a field that does not match, a
// shell without test -nt, no /proc, a time namespace whose offset shifts
// /proc/uptime) starts the binary, which decides.
func Script(name, exe string, skipNotDue bool) []byte {
	q := shellQuote(exe)
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
# A hook that was here before is kept as ` + name + ChainedSuffix + ` and runs first,
# with the same arguments and input; its exit status is this hook's.
status=0
chained="${0%/*}/` + name + ChainedSuffix + `"
if [ -x "$chained" ]; then
	"$chained" "$@"
	status=$?
fi
if [ "${ORCH_HOOKS:-1}" != 0 ]; then
	bin=` + q + `
	if [ -x "$bin" ]; then
` + skip + `		"$bin" hook ` + name + ` "$@" </dev/null
	elif other=$(command -v orch-hooks 2>/dev/null) && [ -n "$other" ]; then
		printf 'orch-hooks: %s hook skipped: %s is gone; not running %s from PATH, which may be another build (%s install switches the hooks to it)\n' ` + name + ` "$bin" "$other" "$other" >&2
	else
		printf 'orch-hooks: %s hook skipped: %s is gone and no orch-hooks is on PATH (install it again, or orch-hooks uninstall removes the hooks)\n' ` + name + ` "$bin" >&2
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

// shellQuote quotes s for sh: single quotes, with ' written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// IsOurs reports whether the hook file content was written by orch-hooks.
func IsOurs(content []byte) bool {
	lines := bytes.SplitN(content, []byte("\n"), 3)
	return len(lines) >= 2 && bytes.HasPrefix(lines[1], []byte(Marker))
}

// Change is one thing Install or Uninstall did (or found done).
type Change struct {
	Hook   string
	Action string // "installed", "chained", "unchanged", "removed", "restored", "kept"
}

// Install writes the hooks into dir for the binary exe. A foreign hook is
// moved aside to <name>.orch-hooks-chained (a rename: bytes and mode kept)
// and run first by ours. Installing twice changes nothing. A foreign hook
// that would replace an existing chained one is refused unless force, which
// then replaces the foreign hook and keeps the chained one as it was.
func Install(dir, exe string, force bool) ([]Change, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install hooks: %w", err)
	}
	var changes []Change
	skipNotDue := ownHooksDir(dir)
	for _, name := range Names {
		path := filepath.Join(dir, name)
		script := Script(name, exe, skipNotDue)
		cur, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := writeHook(path, script); err != nil {
				return changes, err
			}
			changes = append(changes, Change{name, "installed"})
		case err != nil:
			return changes, fmt.Errorf("install %s: %w", name, err)
		case IsOurs(cur):
			fi, _ := os.Stat(path)
			if bytes.Equal(cur, script) && fi.Mode().Perm() == 0o755 {
				changes = append(changes, Change{name, "unchanged"})
				continue
			}
			if err := writeHook(path, script); err != nil {
				return changes, err
			}
			changes = append(changes, Change{name, "installed"})
		default:
			chained := path + ChainedSuffix
			if _, err := os.Lstat(chained); err == nil {
				if !force {
					return changes, fmt.Errorf("install %s: %w: %s replaced our hook after install, and %s is already kept; move one of them away, or run install --force to replace %s",
						name, ErrForeignHook, path, chained, path)
				}
			} else if err := os.Rename(path, chained); err != nil {
				return changes, fmt.Errorf("install %s: keep the existing hook: %w", name, err)
			}
			if err := writeHook(path, script); err != nil {
				return changes, err
			}
			changes = append(changes, Change{name, "chained"})
		}
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
func Uninstall(dir string) ([]Change, error) {
	var changes []Change
	for _, name := range Names {
		path := filepath.Join(dir, name)
		chained := path + ChainedSuffix
		cur, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return changes, fmt.Errorf("uninstall %s: %w", name, err)
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
