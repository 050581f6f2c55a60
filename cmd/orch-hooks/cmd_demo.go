//go:build linux || darwin || freebsd

package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/orch-hooks/orch-hooks/demo"
)

func init() {
	commands = append(commands, &command{name: "demo", args: "", summary: "a scratch repository that shows the whole pipeline",
		help: `Builds a repository in a new temporary directory (printed first) and
drives this binary through it: a task through two stages, a second task
whose monitor and command are killed with SIGKILL, the reaper recovering it,
and its retry. Every step is a real command, printed before its output.`,
		setup: func(fs *flag.FlagSet, c *cli) func([]string) error {
			return func(args []string) error {
				if err := needArgs("demo", args, 0, 0, "no arguments"); err != nil {
					return err
				}
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("demo: find own executable: %w", err)
				}
				// The raw stream: the demo's commands inherit it as a file
				// (no pipe a detached process could hold open), and each
				// of them is an orch-hooks that escapes its own output.
				return demo.Run(c.ctx, exe, c.rawStdout)
			}
		}})
}
