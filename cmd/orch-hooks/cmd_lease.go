//go:build linux || darwin || freebsd

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands,
		&command{name: "lease", args: "(acquire | release | run | status) [flags]", summary: "merge leases: acquire, release, run a command under one, status",
			help: `  lease acquire --target T [--ttl D] [--wait D] [--holder NAME] [--pid PID]
        take the target's lease and print its fencing token. The lease
        belongs to the script that ran the command: the nearest ancestor
        that is not a subshell, so t=$(orch-hooks lease acquire ...), with
        or without redirects, in bash, dash, zsh or a CI step, is held by
        the script, not by the subshell of $(...). It is stale when that
        script ends. Use --pid to name another owner, or lease run to hold
        it for one command.
  lease release --target T --token N
        release it; a token that is no longer current exits 3, lease untouched.
  lease renew --target T --token N
        extend it by its ttl from now.
  lease run --target T [--ttl D] [--wait D] [--holder NAME] -- COMMAND [ARGS...]
        hold the lease for COMMAND's lifetime (ORCH_LEASE_TOKEN and
        ORCH_LEASE_TARGET in its environment), renewing it, and release it
        when COMMAND ends, whatever its exit status (which is passed on).
  lease status [--json]
        the leases held now.
A lease busy past --wait exits 3.`,
			setup: setupLease},
		&command{name: "merge", args: "(JOB | --branch B) [--into T] [--ff-only] [--check] [--remote R] [--token N] [--wait D] [--json]",
			summary: "merge a branch into the target, once, under the target's lease",
			help: `Reads the graph first: already merged (nothing written), fast-forward, or a
real merge computed with git merge-tree (no worktree touched) and committed
with an Orch-Job trailer for a job. The target moves by compare-and-swap,
fencing-checked against the lease token. A worktree that has the target
checked out moves with it, under its index.lock (waiting up to 3s for
another git process to let go), or the target does not move. Local
changes there are kept when the merge does not touch their paths, as git
merge keeps them; a change (or an untracked file) in a path the merge
changes refuses it (exit 1), naming the paths, and nothing is touched. The lease lives lease.ttl_s (ORCH_LEASE_TTL_S). --check decides and reports without writing (a
CI pre-merge step). --remote R fetches first and pushes the result with
--force-with-lease. Without --token the merge takes the target's lease,
waiting up to --wait (default 10m; 0s: not at all). Exit 3: conflict, not a fast-forward
with --ff-only, stale token, lease busy.`,
			setup: setupMerge},
	)
}

// leaseJSON is the stable --json shape of a lease.
type leaseJSON struct {
	Target     string  `json:"target"`
	Holder     string  `json:"holder"`
	PID        int     `json:"pid"`
	Host       string  `json:"host"`
	Token      uint64  `json:"token"`
	AcquiredAt string  `json:"acquired_at"`
	RenewedAt  string  `json:"renewed_at"`
	TTLS       float64 `json:"ttl_s"`
	Stale      bool    `json:"stale"`
}

func toLeaseJSON(l *lease.Lease, now time.Time) leaseJSON {
	stale, _ := lease.Stale(l, now)
	return leaseJSON{Target: l.Target, Holder: l.Holder, PID: l.Owner.PID, Host: l.Owner.Host, Token: l.Token,
		AcquiredAt: *rfc3339(l.AcquiredAt), RenewedAt: *rfc3339(l.RenewedAt), TTLS: l.TTL().Seconds(), Stale: stale}
}

func setupLease(fs *flag.FlagSet, c *cli) func([]string) error {
	target := fs.String("target", "", "target branch")
	ttl := fs.Duration("ttl", 0, "time to live without renewal (default: lease.ttl_s of orch.toml)")
	wait := fs.Duration("wait", 0, "how long to wait for a held lease (default 0: fail at once)")
	holder := fs.String("holder", "", "holder name shown in status (default: user@host)")
	pid := fs.Int("pid", 0, "owning process (acquire; default: the script that ran the command, subshells skipped)")
	tokenStr := fs.String("token", "", "fencing token (release, renew)")
	asJSON := fs.Bool("json", false, "print JSON (status)")
	return func(args []string) error {
		if len(args) == 0 {
			return usageErrorf("lease: give a subcommand: acquire, release, renew, run or status; run orch-hooks lease --help")
		}
		r, err := c.openRepo()
		if err != nil {
			return err
		}
		if _, err := c.openStore(); err != nil {
			return err
		}
		mgr := lease.Open(r.StateDir())
		sub, rest := args[0], args[1:]
		needTarget := func() error {
			if *target == "" {
				return usageErrorf("lease %s: --target is required", sub)
			}
			return gitstate.ValidateBranch(*target)
		}
		token := func() (uint64, error) {
			n, err := strconv.ParseUint(*tokenStr, 10, 64)
			if err != nil || n == 0 {
				return 0, usageErrorf("lease %s: --token %q is not a token (a positive whole number printed by lease acquire)", sub, *tokenStr)
			}
			return n, nil
		}
		request := func(owner procid.Identity) (lease.Request, error) {
			d := *ttl
			if d == 0 {
				cfg, err := c.loadConfig()
				if err != nil {
					return lease.Request{}, err
				}
				d = cfg.Lease.TTL()
			}
			if d <= 0 {
				return lease.Request{}, usageErrorf("lease %s: --ttl must be positive", sub)
			}
			h := *holder
			if h == "" {
				h = defaultHolder()
			}
			return lease.Request{Holder: h, Owner: owner, TTL: d}, nil
		}
		switch sub {
		case "acquire":
			if err := needArgs("lease acquire", rest, 0, 0, "no arguments"); err != nil {
				return err
			}
			if err := needTarget(); err != nil {
				return err
			}
			var owner procid.Identity
			if *pid != 0 {
				if owner, err = procid.Of(*pid); err != nil {
					return usageErrorf("lease acquire: --pid %d: %v", *pid, err)
				}
			} else if owner, err = procid.ScriptOwner(); err != nil {
				return fmt.Errorf("lease acquire: finding the script that owns the lease: %w; name the owner with --pid PID, or use lease run", err)
			}
			req, err := request(owner)
			if err != nil {
				return err
			}
			l, err := acquire(c.ctx, mgr, *target, req, *wait)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, l.Token)
			return nil
		case "release", "renew":
			if err := needArgs("lease "+sub, rest, 0, 0, "no arguments"); err != nil {
				return err
			}
			if err := needTarget(); err != nil {
				return err
			}
			n, err := token()
			if err != nil {
				return err
			}
			if sub == "release" {
				err = mgr.Release(c.ctx, *target, n)
			} else {
				_, err = mgr.Renew(c.ctx, *target, n)
			}
			if errors.Is(err, lease.ErrStaleToken) {
				return withCode(exitNo, err)
			}
			return err
		case "run":
			if err := needTarget(); err != nil {
				return err
			}
			if len(rest) == 0 {
				return usageErrorf("lease run: give the command after --, e.g. orch-hooks lease run --target main -- make deploy")
			}
			self, err := procid.Self()
			if err != nil {
				return err
			}
			req, err := request(self)
			if err != nil {
				return err
			}
			return leaseRun(c, mgr, *target, req, *wait, rest)
		case "status":
			if err := needArgs("lease status", rest, 0, 0, "no arguments"); err != nil {
				return err
			}
			return c.printLeases(mgr, *asJSON)
		}
		return usageErrorf("lease: unknown subcommand %q%s; use acquire, release, renew, run or status", sub,
			didYouMean(sub, []string{"acquire", "release", "renew", "run", "status"}, func(n string) string { return n }))
	}
}

func defaultHolder() string {
	host, _ := procid.Host()
	user := os.Getenv("USER")
	if user == "" {
		user = "user"
	}
	return user + "@" + host
}

// acquire takes a lease, waiting up to wait; busy past it is exit 3.
func acquire(ctx context.Context, mgr *lease.Manager, target string, req lease.Request, wait time.Duration) (*lease.Lease, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	l, err := mgr.Acquire(wctx, target, req)
	if errors.Is(err, lease.ErrBusy) {
		return nil, withCode(exitNo, fmt.Errorf("%w; waited %s (--wait)", err, wait))
	}
	return l, err
}

// leaseRun holds the lease while the command runs, renewing it at a third
// of its TTL, and releases it when the command ends.
func leaseRun(c *cli, mgr *lease.Manager, target string, req lease.Request, wait time.Duration, argv []string) error {
	l, err := acquire(c.ctx, mgr, target, req, wait)
	if err != nil {
		return err
	}
	release := context.WithoutCancel(c.ctx)
	defer mgr.Release(release, target, l.Token)
	cmd := exec.Command(argv[0], argv[1:]...)
	// The user's own command, as if run directly: its output is not ours to
	// escape, and it keeps the terminal.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.rawStdout, c.rawStderr
	cmd.Env = append(os.Environ(), "ORCH_LEASE_TOKEN="+strconv.FormatUint(l.Token, 10), "ORCH_LEASE_TARGET="+target)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lease run: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(max(req.TTL/3, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			code, _, ok := exitStatusOf(err)
			if !ok {
				return fmt.Errorf("lease run: %w", err)
			}
			if code != 0 {
				return &codeError{code, fmt.Errorf("lease run: %s exited %d", argv[0], code)}
			}
			return nil
		case <-tick.C:
			if _, err := mgr.Renew(release, target, l.Token); err != nil {
				c.errf("orch-hooks: warning: renewing the lease: %v\n", err)
			}
		case <-c.ctx.Done():
			// Interrupted: the command got the same signal from the
			// terminal; wait for it so the lease is released after it.
		}
	}
}

func exitStatusOf(err error) (int, string, bool) {
	if err == nil {
		return 0, "", true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), ee.Error(), true
	}
	return -1, err.Error(), false
}

func (c *cli) printLeases(mgr *lease.Manager, asJSON bool) error {
	leases, bad, err := mgr.List()
	if err != nil {
		return err
	}
	now := time.Now()
	if asJSON {
		out := []leaseJSON{}
		for _, l := range leases {
			out = append(out, toLeaseJSON(l, now))
		}
		return writeJSON(c.stdout, map[string]any{"leases": out, "unreadable": toUnreadableJSON(bad)})
	}
	if len(leases) == 0 {
		fmt.Fprintln(c.stdout, "no leases held")
	}
	c.printLeaseTable(leases, now)
	for _, u := range bad {
		fmt.Fprintf(c.stdout, "unreadable: %s: %s\n", termtext.Line(u.Path), termtext.Line(u.Err.Error()))
	}
	return nil
}

func (c *cli) printLeaseTable(leases []*lease.Lease, now time.Time) {
	if len(leases) == 0 {
		return
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tHOLDER\tPID\tTOKEN\tAGE\tTTL\tSTATE")
	for _, l := range leases {
		state := "held"
		if stale, why := lease.Stale(l, now); stale {
			state = "stale: " + why
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", termtext.Line(l.Target), termtext.Line(l.Holder), l.Owner.PID, l.Token, age(now, l.AcquiredAt), l.TTL(), termtext.Line(state))
	}
	tw.Flush()
}

func setupMerge(fs *flag.FlagSet, c *cli) func([]string) error {
	var req merge.Request
	fs.StringVar(&req.Branch, "branch", "", "branch to merge")
	fs.StringVar(&req.Target, "into", "", "target branch (default: the job's target, or target of orch.toml)")
	fs.BoolVar(&req.FFOnly, "ff-only", false, "refuse (exit 3) unless the target can be fast-forwarded")
	fs.BoolVar(&req.Check, "check", false, "report what the merge would do; write nothing")
	fs.StringVar(&req.Remote, "remote", "", "fetch from and push to this remote")
	tokenStr := fs.String("token", "", "fencing token of a lease already held on the target")
	fs.DurationVar(&req.Wait, "wait", merge.WaitDefault, "how long to wait for the target's lease")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(args []string) error {
		r, err := c.openRepo()
		if err != nil {
			return err
		}
		if err := c.sharedLease(&req, len(args) == 1 && req.Branch == ""); err != nil {
			return err
		}
		switch {
		case len(args) == 1 && req.Branch == "":
			env, err := c.env()
			if err != nil {
				return err
			}
			j, err := env.Store.Get(args[0])
			if err != nil {
				return jobLookupError(err)
			}
			// The commit the job's gates passed, when it got that far: a
			// re-run merges what was judged, not a later tip.
			req.Branch, req.Job, req.Commit = j.Branch, j.ID, j.Merging
			if req.Target == "" {
				req.Target = j.Target
			}
			req.Author = merge.Signature{Name: j.MergeAuthor.Name, Email: j.MergeAuthor.Email, When: j.StartedAt}
		case len(args) == 0 && req.Branch != "":
			if req.Target == "" {
				cfg, err := c.loadConfig()
				if err != nil {
					return err
				}
				req.Target = cfg.Target
				if cfg.Path == "" {
					// No orch.toml yet (before init): the target is the
					// one init would write, not a "main" this repository
					// may not have.
					r, err := c.openRepo()
					if err != nil {
						return err
					}
					req.Target, _ = initTarget(c, r)
				}
			}
		default:
			return usageErrorf("merge: give a job id or --branch B; run orch-hooks merge --help")
		}
		if req.Wait <= 0 {
			// merge.Request reads a zero Wait as its default (10m);
			// --wait 0s on the command line means fail at once if busy,
			// as for lease acquire.
			req.Wait = time.Nanosecond
		}
		if *tokenStr != "" {
			if req.Token, err = strconv.ParseUint(*tokenStr, 10, 64); err != nil || req.Token == 0 {
				return usageErrorf("merge: --token %q is not a token (a positive whole number printed by lease acquire)", *tokenStr)
			}
		}
		if !req.Check {
			if _, err := c.openStore(); err != nil {
				return err
			}
			if req.Token == 0 {
				// The lease this merge takes lives lease.ttl_s
				// (ORCH_LEASE_TTL_S wins), like every other lease.
				cfg, err := c.loadConfig()
				if err != nil {
					return err
				}
				req.TTL = cfg.Lease.TTL()
			}
		}
		res, err := merge.New(r).Merge(c.ctx, req)
		if res != nil {
			if *asJSON {
				writeJSON(c.stdout, res)
			} else {
				c.printMerge(res, req)
			}
		}
		return mergeError(err)
	}
}

func mergeError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, merge.ErrBranchMoved):
		return withCode(exitNo, fmt.Errorf("%w; orch-hooks retry JOB runs the gates on the new tip (orch-hooks merge --branch B merges it without them)", err))
	case errors.Is(err, merge.ErrConflict), errors.Is(err, merge.ErrNotFastForward),
		errors.Is(err, lease.ErrStaleToken), errors.Is(err, lease.ErrBusy):
		return withCode(exitNo, err)
	}
	return err
}

// printMerge prints what the merge did, claiming only writes that
// happened: a target that moved (res.Written), on the remote when it was
// pushed there, and a worktree that moved with it (res.Worktree). The
// error, printed after, says what did not happen and why.
func (c *cli) printMerge(res *merge.Result, req merge.Request) {
	verb := map[merge.Kind]string{
		merge.AlreadyMerged: "already merged: nothing to do",
		merge.FastForward:   "fast-forward",
		merge.Merged:        "merge",
		merge.Conflict:      "conflict",
	}[res.Kind]
	if req.Check {
		fmt.Fprintf(c.stdout, "%s into %s: %s\n", termtext.Line(res.Branch), termtext.Line(res.Target), verb)
		for _, p := range res.Conflicts {
			fmt.Fprintf(c.stdout, "  conflict: %s\n", termtext.Line(p))
		}
		return
	}
	for _, p := range res.LocalChanges {
		c.errf("local change in the way: %s\n", termtext.Line(p))
	}
	if !res.Written && (res.Kind == merge.FastForward || res.Kind == merge.Merged) {
		// Decided but not written (refused, fenced out, failed): the
		// error says why; claim nothing.
		return
	}
	target := termtext.Line(res.Target)
	if res.Pushed {
		// What moved is the remote's target; whether the local one
		// followed is said below (the worktree) or by the error.
		target += " on " + termtext.Line(req.Remote)
	}
	switch res.Kind {
	case merge.AlreadyMerged:
		c.errf("%s is already merged into %s (%s): nothing written\n", termtext.Line(res.Branch), termtext.Line(res.Target), short(res.OldTarget))
	case merge.FastForward:
		c.errf("%s fast-forwarded %s → %s\n", target, short(res.OldTarget), short(res.NewTarget))
	case merge.Merged:
		c.errf("%s merged into %s: %s → %s (merge commit)\n", termtext.Line(res.Branch), target, short(res.OldTarget), short(res.NewTarget))
	case merge.Conflict:
		for _, p := range res.Conflicts {
			// A file name may hold a newline or any other byte.
			c.errf("conflict: %s\n", termtext.Line(p))
		}
	}
	if res.Pushed {
		c.errf("pushed %s\n", termtext.Line(res.Target))
	}
	if res.Worktree != "" {
		// Set only once the worktree's index and files hold the new
		// commit (merge.moveWithWorktree).
		c.errf("updated the worktree %s\n", termtext.Line(res.Worktree))
	}
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
