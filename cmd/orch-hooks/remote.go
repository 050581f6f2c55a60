//go:build linux || darwin || freebsd

package main

import (
	"errors"
	"fmt"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
)

// remoteReady are the commands that honour [remote] (remote mode) or do
// not touch state at all. Every other command (gc, gate, lease, and merge
// of a job id) refuses to run in remote mode rather than act on this
// machine's local state as if it were the shared one (docs/DISTRIBUTED.md). hook is not
// here: it never fails git, and says why it skips its pass instead.
var remoteReady = map[string]bool{
	"version": true, "install": true, "uninstall": true, "init": true, "demo": true,
	"merge": true, "hook": true,
	// The shared queue (cmd_remote.go).
	"enqueue": true, "status": true, "show": true, "cancel": true, "logs": true,
	"retry": true, "watch": true,
	// The runner's side: SharedPass, then the local pass (cmd_run.go,
	// cmd_reap.go).
	"dispatch": true, "reap": true, "run": true,
}

// errRemoteNotCovered is the refusal of a command remote mode does not
// cover yet.
func errRemoteNotCovered(what, remote, path string) error {
	return usageErrorf("remote mode does not cover %s yet: [remote] name = %q in %s shares jobs and merge leases through that remote, but %s works on this machine's local state only; run it without remote mode (remove [remote] name), or see docs/DISTRIBUTED.md for what remote mode covers",
		what, remote, path, what)
}

// refuseRemote fails a command that does not honour remote mode when
// orch.toml turns it on. A repository or config that cannot be read is
// left to the command itself to report.
func (c *cli) refuseRemote(name string) error {
	if remoteReady[name] {
		return nil
	}
	// Without its warnings: they are the command's to print (or not), as
	// before remote mode existed. The load is kept for the command.
	cfg, err := c.readConfig()
	if err != nil || !cfg.Remote.Enabled() {
		return nil
	}
	return errRemoteNotCovered(name, cfg.Remote.Name, cfg.Path)
}

// sharedLease sets req up for remote mode when orch.toml turns it on: the
// target's lease is the one shared on [remote] name, and the merge fetches
// from and pushes to that remote. A merge of a job id is refused: a
// shared job merges in its merge stage, under the shared lease, on the
// machine that runs it; merge JOB would act on this machine's local record.
func (c *cli) sharedLease(req *merge.Request, ofJob bool) error {
	cfg, err := c.loadConfig()
	if err != nil || !cfg.Remote.Enabled() {
		return err
	}
	if ofJob {
		return errRemoteNotCovered("merge JOB (jobs)", cfg.Remote.Name, cfg.Path)
	}
	if req.Remote == "" {
		req.Remote = cfg.Remote.Name
	} else if req.Remote != cfg.Remote.Name {
		return usageErrorf("merge: --remote %s, but the merge lease is shared on %s ([remote] name in %s); drop --remote, or merge through %s",
			req.Remote, cfg.Remote.Name, cfg.Path, cfg.Remote.Name)
	}
	r, err := c.openRepo()
	if err != nil {
		return err
	}
	s, err := refstore.Open(r.CommonDir, req.Remote)
	if err != nil {
		return fmt.Errorf("[remote] name in %s: %w", cfg.Path, err)
	}
	req.Shared = remotelease.New(s)
	req.Shared.ClockSkew = cfg.Remote.ClockSkew()
	req.SendToken = cfg.Remote.ServerHook
	return nil
}

// remoteMode reports whether orch.toml turns remote mode on (a config that
// cannot be read is not remote mode: the command reports it itself).
func (c *cli) remoteMode() bool {
	cfg, err := c.readConfig()
	return err == nil && cfg.Remote.Enabled()
}

// openShared opens remote mode's shared queue and leases for repository r
// under cfg: the remote must exist in r and this machine must have a
// name. Nothing is fetched yet.
func (c *cli) openShared(r *gitstate.Repo, cfg *config.Config) (*pipeline.Shared, error) {
	name := cfg.Remote.Name
	if _, err := gitstate.Git(c.ctx, r.CommonDir, "--git-dir="+r.CommonDir, "remote", "get-url", "--", name); err != nil {
		var ge *gitstate.GitError
		if errors.As(err, &ge) && ge.ExitCode == 2 {
			return nil, usageErrorf("[remote] name = %q in %s: this repository has no remote %s (git remote -v lists its remotes); add it with git remote add %s URL, or set [remote] name to one it has",
				name, cfg.Path, name, name)
		}
		return nil, fmt.Errorf("[remote] name = %q in %s: git remote get-url %s: %w", name, cfg.Path, name, err)
	}
	host, err := cfg.Remote.MachineName()
	if err != nil {
		return nil, usageErrorf("remote mode ([remote] name in %s) names this machine in shared records: %v", cfg.Path, err)
	}
	s, err := refstore.Open(r.CommonDir, name)
	if err != nil {
		return nil, fmt.Errorf("[remote] name in %s: %w", cfg.Path, err)
	}
	q := remotejob.New(s, host, r.StateDir())
	q.TTL = cfg.Remote.HeartbeatTTL()
	leases := remotelease.New(s)
	leases.ClockSkew = cfg.Remote.ClockSkew()
	return &pipeline.Shared{Queue: q, Leases: leases, Heartbeat: cfg.Remote.Heartbeat(), SendToken: cfg.Remote.ServerHook}, nil
}
