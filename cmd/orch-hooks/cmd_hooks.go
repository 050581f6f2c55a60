//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/hooks"
)

func init() {
	commands = append(commands,
		&command{name: "install", args: "[--force] [--server]", summary: "install the git hooks (post-commit, post-merge, post-checkout, post-rewrite)",
			help: `Writes the hooks into the directory git uses (core.hooksPath is honoured),
shared by every worktree. Each hook makes a reaper pass within hooks.budget_ms
and prints nothing unless it acted. A hook already there that is not ours is
kept as <name>.orch-hooks-chained and run first, with its arguments, input
and exit status. Installing twice changes nothing; a hook of an older
version is updated. The hooks hold no path of this machine: they run
orch-hooks from PATH (or $ORCH_HOOKS_BIN when set), and without one they
print one line and let git go on. When the hooks directory is tracked by
git (core.hooksPath = .githooks, say), install names the files to commit.

--server, run in the bare repository that several machines push to,
installs a pre-receive hook instead (see docs/DISTRIBUTED.md): a push of a
branch with -o orch-token=N is refused unless N is the token of that
branch's lease (refs/orch/leases/<branch>) held now, and a lease record is
never deleted by a push. It sets receive.advertisePushOptions = true.`,
			setup: setupInstall},
		&command{name: "uninstall", args: "", summary: "remove our git hooks and restore the ones they chained", setup: setupUninstall},
		&command{name: "hook", args: "NAME [ARGS...]", summary: "what an installed hook runs (a budgeted reaper pass)",
			help: `Run by the installed hooks. Does nothing when ORCH_HOOKS=0, when the
repository is not initialised, or when another reaper pass is running.
A broken orch.toml (or a state dir it cannot use) is said in one line on
stderr, at most once per reaper interval (ORCH_REAPER_INTERVAL_S, else 30 s,
since the file cannot say it); never fails.`,
			setup: setupHook},
	)
}

func setupInstall(fs *flag.FlagSet, c *cli) func([]string) error {
	force := fs.Bool("force", false, "replace a foreign hook that took the place of ours")
	server := fs.Bool("server", false, "in the bare repository machines share: install the pre-receive hook that fences merges by their lease token")
	return func(args []string) error {
		if err := needArgs("install", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		if *server {
			return c.installServer(*force)
		}
		dir, err := c.hooksDir()
		if err != nil {
			return err
		}
		changes, err := hooks.Install(dir, *force)
		for _, ch := range changes {
			c.errf("%s: %s\n", ch.Hook, ch.Action)
		}
		if err != nil {
			return err
		}
		c.errf("hooks in %s run %s\n", dir, c.hookBinary())
		c.sayShared(dir, "install")
		if r, err := c.openRepo(); err == nil {
			if _, err := os.Stat(r.StateDir()); errors.Is(err, os.ErrNotExist) {
				// The hooks stay silent in a repository that is not
				// initialised; install is where a user learns why.
				c.errf("this repository is not initialised yet, so the hooks do nothing: run orch-hooks init\n")
			}
		}
		return nil
	}
}

// hookBinary says which orch-hooks the installed hooks will run from this
// environment, and warns when that is none or another file than this one.
func (c *cli) hookBinary() string {
	exe, _ := os.Executable()
	name, how := "orch-hooks", "orch-hooks from PATH"
	if v := os.Getenv(hooks.BinEnv); v != "" {
		name, how = v, hooks.BinEnv+"="+v
	}
	found, err := exec.LookPath(name)
	if err != nil {
		fix := fmt.Sprintf("put it on PATH, or set %s to its path", hooks.BinEnv)
		if exe != "" && !strings.Contains(exe, string(filepath.Separator)+"go-build") {
			fix = fmt.Sprintf("put %s on PATH (export PATH=\"%s:$PATH\"), or set %s=%s", filepath.Dir(exe), filepath.Dir(exe), hooks.BinEnv, exe)
		} else if exe != "" {
			fix = fmt.Sprintf("%s is a temporary build (go run): go install ./cmd/orch-hooks and put $(go env GOPATH)/bin on PATH, or set %s", exe, hooks.BinEnv)
		}
		c.errf("warning: %s finds no executable here, so the hooks skip their pass (one line on each git command) until it does: %s\n", how, fix)
		return how
	}
	if abs, err := filepath.Abs(found); err == nil {
		found = abs
	}
	if fi, err := os.Stat(found); err == nil && exe != "" {
		if self, err := os.Stat(exe); err == nil && !os.SameFile(fi, self) {
			return fmt.Sprintf("%s: %s (not this binary, %s)", how, found, exe)
		}
	}
	return fmt.Sprintf("%s: %s", how, found)
}

// sayShared tells, after install or uninstall (what), when the hooks dir is
// one git tracks or could (inside the worktree), which of our files to
// commit so that every clone gets the same hooks.
func (c *cli) sayShared(dir, what string) {
	r, err := c.openRepo()
	if err != nil || r.Worktree == "" {
		return
	}
	sh, err := hooks.SharedDir(c.ctx, r.Worktree, dir)
	if err != nil {
		c.errf("warning: could not tell whether git tracks %s: %v\n", dir, err)
		return
	}
	if sh == nil || len(sh.Uncommitted) == 0 {
		return
	}
	state := "is tracked by git"
	if !sh.Tracked {
		state = "is in the worktree (not tracked yet)"
	}
	quoted := make([]string, len(sh.Uncommitted))
	for i, p := range sh.Uncommitted {
		quoted[i] = shellWord(p)
	}
	files := strings.Join(quoted, " ")
	if what == "install" {
		c.errf("%s %s: %s wrote files to commit so that every clone runs these hooks (they hold no path of this machine): from %s run\n  git add -- %s && git commit -m 'orch-hooks hooks'\n",
			sh.Dir, state, what, r.Worktree, files)
	} else {
		c.errf("%s %s: %s changed files to commit so that every clone drops these hooks: from %s run\n  git add -- %s && git commit -m 'remove orch-hooks hooks'\n",
			sh.Dir, state, what, r.Worktree, files)
	}
}

// shellWord quotes s for a shell command line when it needs it.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./+=:@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func setupUninstall(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if err := needArgs("uninstall", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		dir, err := c.hooksDir()
		if err != nil {
			return err
		}
		changes, err := hooks.Uninstall(dir)
		for _, ch := range changes {
			msg := ch.Action
			if ch.Action == "kept" {
				msg = "kept (not ours)"
			}
			c.errf("%s: %s\n", ch.Hook, msg)
		}
		if len(changes) == 0 && err == nil {
			c.errf("no orch-hooks hooks in %s\n", dir)
		}
		if err == nil {
			c.sayShared(dir, "uninstall")
		}
		return err
	}
}

func (c *cli) hooksDir() (string, error) {
	r, err := c.openRepo()
	if err != nil {
		return "", err
	}
	dir := r.Worktree
	if dir == "" {
		dir = r.CommonDir
	}
	return hooks.Dir(c.ctx, dir)
}

func setupHook(fs *flag.FlagSet, c *cli) func([]string) error {
	return func(args []string) error {
		if hooks.Disabled() {
			return nil
		}
		r, err := c.openRepo()
		if err != nil {
			return nil
		}
		// Most commits end here: the pass is not due, known from one small
		// file and a stat, before any TOML is decoded.
		cfgPath, _ := config.Find(c.configFlag, r.MainWorktree, r.Worktree)
		if hooks.NotDue(r.StateDir(), cfgPath, time.Now()) {
			return nil
		}
		c.quietWarnings = true
		// Not initialised: orch-hooks is not used here (the hooks may be
		// in a shared core.hooksPath), so there is nothing to say, not
		// even about an orch.toml.
		if _, err := c.openStore(); errors.Is(err, gitstate.ErrNotInitialised) {
			return nil
		}
		// Not the shared queue: a hook in remote mode only says it makes
		// no pass (below), and opening the queue costs a git process.
		env, err := c.openEnv(false)
		var cfgErr *config.Error
		switch {
		case err == nil:
		case errors.Is(err, gitstate.ErrNotInitialised):
			return nil
		case errors.As(err, &cfgErr):
			// Said once per interval, never silently: a hook that skips
			// its pass without a word leaves the reaper off unnoticed.
			// A hook never fails git.
			hooks.WarnConfig(r.StateDir(), cfgPath, config.IntervalFallback(), err, c.stderr)
			return nil
		default:
			// A state dir that cannot be used: said (once per interval),
			// and git goes on.
			hooks.Warn(r.StateDir(), cfgPath, config.IntervalFallback(), err, c.stderr)
			return nil
		}
		if env.Config.Remote.Enabled() {
			// Said once per interval: a git hook reaches no remote (it
			// must not make git wait on the network), and a pass over
			// this machine's local state alone is not remote mode's.
			hooks.Warn(r.StateDir(), cfgPath, env.Config.Reaper.Interval(),
				fmt.Errorf("remote mode ([remote] name = %q in %s): a git hook reaches no remote, so the pass over the shared queue is watch's or reap's; keep orch-hooks watch running on this machine",
					env.Config.Remote.Name, env.Config.Path), c.stderr)
			return nil
		}
		exe, _ := os.Executable()
		hooks.Run(c.ctx, env, exe, c.stderr)
		return nil
	}
}

// installServer is install --server: the fencing hook of a shared bare
// repository (hooks.InstallServer).
func (c *cli) installServer(force bool) error {
	r, err := c.openRepo()
	if err != nil {
		return err
	}
	changes, err := hooks.InstallServer(c.ctx, r.CommonDir, force)
	for _, ch := range changes {
		c.errf("%s: %s\n", ch.Hook, ch.Action)
	}
	if err != nil {
		return err
	}
	c.errf("receive.advertisePushOptions = true: pushes with -o orch-token=N to a branch are refused unless N is its lease's current token\n")
	return nil
}
