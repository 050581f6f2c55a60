package gitstate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// ErrDubiousOwnership is returned (wrapped) by Open for a repository, or a
// state dir, owned by another user than the one running orch-hooks.
var ErrDubiousOwnership = errors.New("owned by another user")

// checkOwnership refuses a repository owned by someone else, the way git's
// safe.directory check does (git-config(1), "safe.directory"): each of the
// worktree, the git dir, the common git dir and the state dir (when it
// exists) must belong to the effective user — or, for root, to root or to
// the user sudo ran it for (SUDO_UID) — unless safe.directory, read from
// the protected configuration only (system, global and command line, never
// the repository's own), is "*" or names the repository.
//
// The state dir is checked too: a command run as root in another user's
// repository would otherwise leave root-owned lock files behind, after which
// that user's hooks could no longer make a pass.
//
// Unlike git, the check also applies when GIT_DIR names the repository
// explicitly: state written by the wrong user harms the same.
func (r *Repo) checkOwnership() error {
	paths := []string{r.Worktree, r.GitDir, r.CommonDir, r.StateDir()}
	for i, p := range paths {
		if p == "" {
			continue
		}
		var st syscall.Stat_t
		// Stat, not Lstat, for the state dir: it may be a symlink placed
		// by the owner; its target is what gets written.
		var err error
		if i == len(paths)-1 {
			err = syscall.Stat(p, &st)
		} else {
			err = syscall.Lstat(p, &st)
		}
		if err != nil {
			continue // missing: nothing of anyone's to write into
		}
		if ownedByCaller(int(st.Uid)) || safeDirectory(r) {
			continue
		}
		return fmt.Errorf("%s is %w (%s), not by %s, who runs orch-hooks: refused, as git refuses such a repository (safe.directory). "+
			"Run orch-hooks as the owner (sudo -u %s orch-hooks ...); or, if you trust it, mark it safe: git config --global --add safe.directory %s",
			p, ErrDubiousOwnership, statefile.UserName(int(st.Uid)), statefile.UserName(os.Geteuid()), loginName(int(st.Uid)), safeName(r))
	}
	return nil
}

// ownedByCaller is git's is_path_owned_by_current_uid: the effective user
// owns it, or the caller is root and root or the sudo caller owns it.
func ownedByCaller(uid int) bool {
	euid := os.Geteuid()
	if uid == euid {
		return true
	}
	if euid == 0 {
		if s, ok := os.LookupEnv("SUDO_UID"); ok {
			if n, err := strconv.ParseUint(s, 10, 32); err == nil && int(n) == uid {
				return true
			}
		}
	}
	return false
}

// safeName is the path git would compare against safe.directory: the
// worktree's top, or the git dir of a bare repository.
func safeName(r *Repo) string {
	if r.Worktree != "" {
		return r.Worktree
	}
	return r.CommonDir
}

// safeDirectory reports whether the protected configuration's
// safe.directory values let r be used: "*", the repository's path, or a
// "<prefix>/*" it lies under; an empty value clears the values before it.
// It runs git outside any repository (so the repository's own config, which
// git never trusts for this, is not read) and only on a mismatch of owners.
func safeDirectory(r *Repo) bool {
	cmd := exec.Command("git", "config", "--get-all", "safe.directory")
	cmd.Dir = "/"
	for _, kv := range os.Environ() {
		// Not the repository's: GIT_DIR and friends. Not GIT_CONFIG,
		// which would make git config read one file only. The command-line
		// scope (GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT) is protected and
		// kept, as git keeps it.
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_CONFIG":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "ORCH_HOOKS=0", "GIT_CEILING_DIRECTORIES=/")
	out, err := cmd.Output()
	if err != nil {
		return false
	}
	var values []string
	for _, v := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if v == "" {
			values = nil
			continue
		}
		values = append(values, v)
	}
	candidates := map[string]bool{}
	for _, p := range []string{r.Worktree, r.MainWorktree, r.GitDir, r.CommonDir} {
		if p == "" {
			continue
		}
		candidates[filepath.Clean(p)] = true
		if rp, err := filepath.EvalSymlinks(p); err == nil {
			candidates[rp] = true
		}
	}
	for _, v := range values {
		if v == "*" {
			return true
		}
		v = strings.TrimPrefix(v, "%(prefix)")
		if prefix, ok := strings.CutSuffix(v, "/*"); ok {
			for c := range candidates {
				if c == prefix || strings.HasPrefix(c, strings.TrimSuffix(prefix, "/")+"/") {
					return true
				}
			}
			continue
		}
		if candidates[filepath.Clean(v)] {
			return true
		}
		if rp, err := filepath.EvalSymlinks(v); err == nil && candidates[rp] {
			return true
		}
	}
	return false
}

// loginName is the user as sudo -u takes it ("#1000" when the account
// cannot be looked up).
func loginName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return "#" + strconv.Itoa(uid)
}
