//go:build linux || darwin || freebsd

package main

import (
	"flag"
	"fmt"

	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands, &command{name: "gc", args: "[--older-than D] [--dry-run] [--force] [--json]",
		summary: "remove worktrees, records and logs of long-ended jobs",
		help: `Removes the records, logs and lock files of jobs that ended longer ago than
D (default: gc.older_than_s of orch.toml, 7 days), and the linked worktrees
of tasks all of whose jobs go. A worktree with uncommitted changes is kept
and listed (with its task's records) unless --force. Branches are never
deleted; only worktrees under the configured worktrees dir are removed;
unreadable records are left in place. Runs git worktree prune afterwards.`,
		setup: func(fs *flag.FlagSet, c *cli) func([]string) error {
			olderThan := fs.Duration("older-than", -1, "remove jobs ended longer ago than this (e.g. 72h, 0s)")
			dry := fs.Bool("dry-run", false, "print what would be removed; remove nothing")
			force := fs.Bool("force", false, "remove worktrees with uncommitted changes too")
			asJSON := fs.Bool("json", false, "print the report as JSON")
			return func(args []string) error {
				if err := needArgs("gc", args, 0, 0, "no arguments"); err != nil {
					return err
				}
				env, err := c.env()
				if err != nil {
					return err
				}
				d := *olderThan
				if d < 0 {
					d = env.Config.GC.OlderThan()
				}
				rep, err := env.GC(c.ctx, d, *dry, *force)
				if *asJSON {
					if werr := writeJSON(c.stdout, rep); err == nil {
						err = werr
					}
					return err
				}
				verb := "removed"
				if *dry {
					verb = "would remove"
				}
				for _, w := range rep.Worktrees {
					c.errf("%s worktree %s\n", verb, termtext.Line(w))
				}
				for _, w := range rep.KeptDirty {
					c.errf("kept worktree %s: uncommitted changes (gc --force removes it)\n", termtext.Line(w))
				}
				for _, t := range rep.Temps {
					c.errf("%s abandoned temporary file %s\n", verb, termtext.Line(t))
				}
				c.errf("%s %d job record(s) ended more than %s ago, %s of records and logs, %d worktree(s)\n",
					verb, len(rep.Jobs), d, humanBytes(rep.Bytes), len(rep.Worktrees))
				return err
			}
		}})
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
