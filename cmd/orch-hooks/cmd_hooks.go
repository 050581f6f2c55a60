package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/hooks"
)

func init() {
	commands = append(commands,
		&command{name: "install", args: "[--force]", summary: "install the git hooks (post-commit, post-merge, post-checkout, post-rewrite)",
			help: `Writes the hooks into the directory git uses (core.hooksPath is honoured),
shared by every worktree. Each hook makes a reaper pass within hooks.budget_ms
and prints nothing unless it acted. A hook already there that is not ours is
kept as <name>.orch-hooks-chained and run first, with its arguments, input
and exit status. Installing twice changes nothing. The hooks call this
binary by its absolute path, falling back to orch-hooks on PATH; with
neither they print one line and let git go on.`,
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
	return func(args []string) error {
		if err := needArgs("install", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		dir, err := c.hooksDir()
		if err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("install: find own executable: %w", err)
		}
		if strings.Contains(exe, string(filepath.Separator)+"go-build") {
			c.errf("warning: %s is a temporary build (go run); the hooks will fall back to orch-hooks on PATH once it is gone. Use go install, then orch-hooks install.\n", exe)
		}
		changes, err := hooks.Install(dir, exe, *force)
		for _, ch := range changes {
			c.errf("%s: %s\n", ch.Hook, ch.Action)
		}
		if err != nil {
			return err
		}
		c.errf("hooks in %s call %s\n", dir, exe)
		return nil
	}
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
		env, err := c.env()
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
		exe, _ := os.Executable()
		hooks.Run(c.ctx, env, exe, c.stderr)
		return nil
	}
}
