//go:build linux || darwin || freebsd

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// Exit codes (DESIGN.md "Command line").
const (
	exitOK    = 0
	exitError = 1 // operational error
	exitUsage = 2 // usage or configuration error
	exitNo    = 3 // a definite "no": gate failed, conflict, lease busy, stale token
)

// exitError carries an exit code with an error.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &codeError{exitUsage, fmt.Errorf(format, args...)}
}

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codeError{code, err}
}

// exitCode maps an error to the exit code DESIGN.md gives it.
func exitCode(err error) int {
	var ce *codeError
	var cfgErr *config.Error
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.As(err, &cfgErr),
		errors.Is(err, gitstate.ErrBadName),
		errors.Is(err, gitstate.ErrNotInitialised),
		errors.Is(err, gitstate.ErrNotRepository),
		errors.Is(err, gitstate.ErrDubiousOwnership),
		errors.Is(err, pipeline.ErrUnknownStage):
		return exitUsage
	case errors.Is(err, pipeline.ErrWrongStatus), errors.Is(err, pipeline.ErrLocalID):
		return exitNo
	default:
		return exitError
	}
}

// command is one subcommand: its flags are declared by setup, which returns
// the function that runs it with the positional arguments.
type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	help    string // longer text for --help
	setup   func(fs *flag.FlagSet, c *cli) func(args []string) error
}

var commands []*command

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// cli is one invocation: global flags, output streams, and the lazily opened
// repository, config and store.
type cli struct {
	// stdout and stderr escape control characters (termtext.Writer): text
	// that came from a job, a gate, a branch or a file name never drives
	// the terminal. rawStdout and rawStderr are the streams themselves, for
	// the live view's own escape codes, logs asked for raw and the output
	// of a command the user runs under lease run.
	stdout, stderr       io.Writer
	rawStdout, rawStderr io.Writer
	dir                  string // -C
	configFlag           string // --config
	ctx                  context.Context
	// quietWarnings keeps configuration warnings off stderr: a hook run
	// prints nothing unless it acted.
	quietWarnings bool
	// monitor is set for `run JOB`, which handles SIGINT and SIGTERM
	// itself (see Main).
	monitor atomic.Bool

	repo *gitstate.Repo
	cfg  *config.Config
	// cfgWarned: cfg's warnings were said (or are the caller's to say).
	cfgWarned bool
	store     *gitstate.Store
}

const globalUsage = `orch-hooks runs long jobs (coding agents, builds) against a git repository,
one branch per task, through stages with quality gates, and merges them one
at a time; its state lives under .git and stays true when processes die.

Usage:
  orch-hooks [-C DIR] [--config FILE] COMMAND [flags] [args]

Commands:
%s
Global flags:
  -C DIR         run as if started in DIR
  --config FILE  read FILE instead of orch.toml at the top of the main worktree

Exit codes: 0 success, 1 operational error, 2 usage or configuration error,
3 a definite "no" (gate failed, merge conflict, lease busy, stale token).

Run "orch-hooks COMMAND --help" for a command's flags.
`

func printGlobalUsage(w io.Writer) {
	var b strings.Builder
	cs := append([]*command(nil), commands...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, globalUsage, b.String())
}

// signalGrace bounds how long a command goes on after SIGINT or SIGTERM:
// it gets its context cancelled at once (lock and lease waits, watch and
// log follow end on it), and if it has not returned by then the process
// exits anyway. DESIGN.md: every command ends within a second of Ctrl-C or
// SIGTERM. Every write is a crash-safe replace, so ending anywhere is safe;
// running jobs, in their own sessions, are left running.
const signalGrace = 800 * time.Millisecond

// Main runs the command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outT, errT := termtext.NewWriter(stdout), termtext.NewWriter(stderr)
	defer outT.Flush()
	defer errT.Flush()
	c := &cli{stdout: outT, stderr: errT, rawStdout: stdout, rawStderr: stderr, ctx: ctx}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	defer close(done)
	defer signal.Stop(sigs)
	go func() {
		select {
		case sig := <-sigs:
			cancel()
			if c.monitor.Load() {
				// `run JOB` is the job's monitor: it passes the signal on
				// to the job and records its end (pipeline.Env.Run), which
				// a forced exit would cut short.
				return
			}
			// A second signal takes its default action: killed at once.
			signal.Stop(sigs)
			t := time.NewTimer(signalGrace)
			select {
			case <-t.C:
				fmt.Fprintf(errT, "orch-hooks: interrupted by %v; stopped (running jobs keep running)\n", sig)
				outT.Flush()
				errT.Flush()
				os.Exit(exitError)
			case <-done:
				t.Stop()
			}
		case <-done:
		}
	}()
	err := c.run(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(errT, "orch-hooks: %v\n", err)
	}
	return exitCode(err)
}

func (c *cli) run(args []string) error {
	for len(args) > 0 {
		a := args[0]
		switch {
		case a == "-C" || a == "--C":
			if len(args) < 2 {
				return usageErrorf("-C needs a directory")
			}
			c.dir, args = joinDir(c.dir, args[1]), args[2:]
		case strings.HasPrefix(a, "-C="):
			c.dir, args = joinDir(c.dir, strings.TrimPrefix(a, "-C=")), args[1:]
		case a == "--config" || a == "-config":
			if len(args) < 2 {
				return usageErrorf("--config needs a file")
			}
			c.configFlag, args = args[1], args[2:]
		case strings.HasPrefix(a, "--config="):
			c.configFlag, args = strings.TrimPrefix(a, "--config="), args[1:]
		case a == "-h" || a == "--help" || a == "help":
			if a == "help" && len(args) > 1 {
				return c.run([]string{args[1], "--help"})
			}
			printGlobalUsage(c.stdout)
			return flag.ErrHelp
		case a == "--version":
			args = []string{"version"}
		case strings.HasPrefix(a, "-"):
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if lookup(name) != nil {
				return usageErrorf("unknown global flag %s; did you mean the command %s? (run orch-hooks --help)", a, name)
			}
			return usageErrorf("unknown global flag %s%s; run orch-hooks --help", a, didYouMean(name, globalFlagNames, dashed))
		default:
			goto command
		}
	}
	printGlobalUsage(c.stderr)
	return usageErrorf("no command given")
command:
	if c.dir != "" {
		if err := os.Chdir(c.dir); err != nil {
			return usageErrorf("-C %s: %v", c.dir, err)
		}
	}
	cmd := lookup(args[0])
	if cmd == nil {
		return usageErrorf("unknown command %q%s; run orch-hooks --help for the list", args[0], didYouMean(args[0], commandNames(), func(n string) string { return n }))
	}
	c.monitor.Store(cmd.name == "run")
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runFn := cmd.setup(fs, c)
	pos, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		c.commandUsage(c.stdout, cmd, fs)
		return flag.ErrHelp
	}
	if err != nil {
		return usageErrorf("%s: %s; run orch-hooks %s --help", cmd.name, flagError(fs, err), cmd.name)
	}
	if err := c.refuseRemote(cmd.name); err != nil {
		return err
	}
	return runFn(pos)
}

// dashed is how a flag is written everywhere this command prints one: a
// one-letter flag with one dash (-C, -f), any other with two (--branch),
// as git writes them. The flag package reads both forms either way.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// globalFlagNames are the flags that go before the command.
var globalFlagNames = []string{"C", "config", "help", "version"}

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for _, c := range commands {
		names = append(names, c.name)
	}
	return names
}

// flagNames are the flags fs defines.
func flagNames(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

// unknownFlag is the error for a flag fs does not define, with the nearest
// defined ones.
type unknownFlag struct{ arg, hint string }

func (e *unknownFlag) Error() string { return "unknown flag " + e.arg + e.hint }

// flagError rewrites an error of the flag package in this command's terms:
// flags written as --name (the flag package writes -name), an unknown flag
// with the nearest ones suggested.
func flagError(fs *flag.FlagSet, err error) string {
	var uf *unknownFlag
	if errors.As(err, &uf) {
		return uf.Error()
	}
	msg := err.Error()
	for _, name := range flagNames(fs) {
		if len(name) > 1 {
			msg = strings.ReplaceAll(msg, "flag -"+name+":", "flag "+dashed(name)+":")
			msg = strings.ReplaceAll(msg, "for -"+name+":", "for "+dashed(name)+":")
			msg = strings.ReplaceAll(msg, "argument: -"+name, "argument: "+dashed(name))
		}
	}
	return msg
}

// didYouMean is " (did you mean X?)" (or "X or Y") for the names near
// typed: those at most two edits away, or of which typed is a prefix (or
// the other way round), nearest first; "" when none is.
func didYouMean(typed string, names []string, show func(string) string) string {
	type cand struct {
		name string
		d    int
	}
	var cs []cand
	for _, n := range names {
		d := editDistance(strings.ToLower(typed), strings.ToLower(n))
		prefix := typed != "" && (strings.HasPrefix(n, typed) || (len(typed) > len(n) && len(n) > 1 && strings.HasPrefix(typed, n)))
		if d <= 2 && d < len(n) || prefix {
			cs = append(cs, cand{n, d})
		}
	}
	if len(cs) == 0 {
		return ""
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].d != cs[j].d {
			return cs[i].d < cs[j].d
		}
		return cs[i].name < cs[j].name
	})
	if len(cs) > 3 {
		cs = cs[:3]
	}
	var out []string
	for _, c := range cs {
		out = append(out, show(c.name))
	}
	return " (did you mean " + strings.Join(out, " or ") + "?)"
}

// editDistance is the Levenshtein distance between a and b, by runes.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

func (c *cli) commandUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: orch-hooks %s %s\n\n%s\n", cmd.name, cmd.args, cmd.summary)
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		printFlags(w, fs)
	}
}

// printFlags is flag.PrintDefaults with each flag written the way the usage
// line and every message write it (dashed): --branch, not -branch.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  " + dashed(f.Name)
		if typ != "" {
			line += " " + typ
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			if typ == "string" {
				line += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				line += fmt.Sprintf(" (default %v)", f.DefValue)
			}
		}
		fmt.Fprintln(w, line)
	})
}

// joinDir applies a -C after earlier ones, as git does: a relative
// directory is taken relative to the one before.
func joinDir(prev, next string) string {
	if prev == "" || filepath.IsAbs(next) {
		return next
	}
	return filepath.Join(prev, next)
}

// parseInterspersed lets flags stand before or after positional arguments,
// as git's do; "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs.Lookup(name) == nil && name != "h" && name != "help" {
			typed, _, _ := strings.Cut(a, "=")
			return nil, &unknownFlag{arg: typed, hint: didYouMean(name, flagNames(fs), dashed)}
		}
		if hasValue {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	return pos, nil
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// needArgs checks the number of positional arguments.
func needArgs(cmd string, args []string, min, max int, what string) error {
	if len(args) < min || (max >= 0 && len(args) > max) {
		return usageErrorf("%s: expected %s, got %d argument(s); run orch-hooks %s --help", cmd, what, len(args), cmd)
	}
	return nil
}

// openRepo opens the repository of the working directory.
func (c *cli) openRepo() (*gitstate.Repo, error) {
	if c.repo != nil {
		return c.repo, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	r, err := gitstate.Open(wd)
	if err != nil {
		return nil, err
	}
	c.repo = r
	return r, nil
}

// loadConfig reads orch.toml (or --config).
func (c *cli) loadConfig() (*config.Config, error) {
	cfg, err := c.readConfig()
	if err != nil {
		return nil, err
	}
	if !c.cfgWarned {
		c.cfgWarned = true
		for _, w := range cfg.Warnings {
			if !c.quietWarnings {
				c.errf("orch-hooks: warning: %v\n", w)
			}
		}
	}
	return cfg, nil
}

// readConfig is loadConfig without its warnings: the one load of orch.toml
// a command makes, kept for every later use (refuseRemote reads it before
// the command decides whether it needs the configuration at all).
func (c *cli) readConfig() (*config.Config, error) {
	if c.cfg != nil {
		return c.cfg, nil
	}
	r, err := c.openRepo()
	if err != nil {
		return nil, err
	}
	path, required := config.Find(c.configFlag, r.MainWorktree, r.Worktree)
	cfg, err := config.Load(path, required)
	if err != nil {
		return nil, err
	}
	c.cfg = cfg
	return cfg, nil
}

// openStore opens the job store of an initialised repository.
func (c *cli) openStore() (*gitstate.Store, error) {
	if c.store != nil {
		return c.store, nil
	}
	r, err := c.openRepo()
	if err != nil {
		return nil, err
	}
	s, err := gitstate.OpenStore(r.StateDir())
	if err != nil {
		return nil, err
	}
	c.store = s
	return s, nil
}

// env opens everything a pipeline operation needs, the shared queue
// included in remote mode.
func (c *cli) env() (*pipeline.Env, error) { return c.openEnv(true) }

// openEnv is env; without shared, remote mode's queue is not opened (a
// git hook, which reaches no remote, need not pay the git process that
// checks the remote exists).
func (c *cli) openEnv(shared bool) (*pipeline.Env, error) {
	r, err := c.openRepo()
	if err != nil {
		return nil, err
	}
	cfg, err := c.loadConfig()
	if err != nil {
		return nil, err
	}
	s, err := c.openStore()
	if err != nil {
		return nil, err
	}
	env := &pipeline.Env{Repo: r, Store: s, Config: cfg}
	if shared && cfg.Remote.Enabled() {
		if env.Shared, err = c.openShared(r, cfg); err != nil {
			return nil, err
		}
	}
	// A pass (reap, watch, a hook) and dispatch start a new monitor for a
	// job whose monitor died while its command lived: this binary, run
	// --adopt, detached.
	if exe, err := os.Executable(); err == nil {
		env.Adopter = env.StartAdopter(exe, env.MonitorArgs()...)
	}
	return env, nil
}

func (c *cli) errf(format string, args ...any) {
	fmt.Fprintf(c.stderr, format, args...)
}
