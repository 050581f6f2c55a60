package pipeline

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
)

// GateTimeoutDefault bounds a cmd: gate, so that a hung check cannot hold a
// monitor or a reaper pass forever.
const GateTimeoutDefault = 10 * time.Minute

// GateInput is what a gate evaluation looks at.
type GateInput struct {
	Stage    config.Stage
	Branch   string
	Target   string
	Worktree string            // "" when the branch is checked out nowhere
	Env      map[string]string // ORCH_* variables for cmd: gates
}

// EvaluateGates runs every gate of the stage, read-only: it changes no
// record and no ref (mergeable writes a tree object, never a ref). Each gate
// is evaluated even when an earlier one failed, so the report is whole.
func (e *Env) EvaluateGates(ctx context.Context, in GateInput) []gitstate.GateResult {
	out := make([]gitstate.GateResult, 0, len(in.Stage.Gates))
	for _, g := range in.Stage.Gates {
		passed, detail := e.evaluateGate(ctx, g, in)
		out = append(out, gitstate.GateResult{Name: g, Passed: passed, Detail: detail, At: time.Now().UTC()})
	}
	return out
}

// FirstFailed returns the first failed gate, or nil when all passed.
func FirstFailed(rs []gitstate.GateResult) *gitstate.GateResult {
	for i := range rs {
		if !rs[i].Passed {
			return &rs[i]
		}
	}
	return nil
}

func (e *Env) evaluateGate(ctx context.Context, gate string, in GateInput) (bool, string) {
	branch, target := "refs/heads/"+in.Branch, "refs/heads/"+in.Target
	switch {
	case gate == config.GateCommitsAhead:
		if err := e.verifyRefs(ctx, branch, target); err != nil {
			return false, err.Error()
		}
		n, err := gitstate.Git(ctx, e.gitDir(), "rev-list", "--count", target+".."+branch)
		if err != nil {
			return false, err.Error()
		}
		if n == "0" {
			return false, fmt.Sprintf("%s has no commits beyond %s", in.Branch, in.Target)
		}
		return true, fmt.Sprintf("%s commit(s) beyond %s", n, in.Target)

	case gate == config.GateMergeable:
		if err := e.verifyRefs(ctx, branch, target); err != nil {
			return false, err.Error()
		}
		conflicts, err := e.Conflicts(ctx, target, branch)
		if err != nil {
			return false, err.Error()
		}
		if len(conflicts) > 0 {
			return false, "conflicts with " + in.Target + " in " + strings.Join(conflicts, ", ")
		}
		return true, "merges cleanly into " + in.Target

	case gate == config.GateCleanWorktree:
		if in.Worktree == "" {
			return false, fmt.Sprintf("%s is not checked out in any worktree", in.Branch)
		}
		st, err := gitstate.Git(ctx, in.Worktree, "status", "--porcelain")
		if err != nil {
			return false, err.Error()
		}
		if st != "" {
			lines := strings.Split(st, "\n")
			return false, fmt.Sprintf("%d uncommitted change(s) in %s: %s", len(lines), in.Worktree, strings.Join(lines[:min(len(lines), 5)], "; "))
		}
		return true, "no uncommitted changes"

	case strings.HasPrefix(gate, config.GateCmdPrefix):
		script := strings.TrimPrefix(gate, config.GateCmdPrefix)
		if in.Worktree == "" {
			return false, fmt.Sprintf("%s is not checked out in any worktree to run the check in", in.Branch)
		}
		ctx, cancel := context.WithTimeout(ctx, GateTimeoutDefault)
		defer cancel()
		tail := &tailWriter{max: 2048}
		cmd := shellCmd(ctx, in.Worktree, script, mergeEnv(os.Environ(), in.Env), tail)
		code, detail, _ := exitStatus(cmd.Run())
		if ctx.Err() != nil {
			detail = fmt.Sprintf("timed out after %s", GateTimeoutDefault)
		}
		msg := strings.TrimSpace(tail.String())
		if code == 0 {
			return true, "exit code 0"
		}
		if msg != "" {
			detail += ": " + lastLines(msg, 5)
		}
		return false, detail
	}
	return false, fmt.Sprintf("unknown gate %q", gate)
}

// verifyRefs checks that each ref names a commit. On git 2.39 merge-tree
// exits 1 for an unknown ref as it does for a conflict, so this comes first.
func (e *Env) verifyRefs(ctx context.Context, refs ...string) error {
	for _, r := range refs {
		if _, err := gitstate.Git(ctx, e.gitDir(), "rev-parse", "--verify", "--quiet", r+"^{commit}"); err != nil {
			return fmt.Errorf("%s does not exist", strings.TrimPrefix(r, "refs/heads/"))
		}
	}
	return nil
}

// Conflicts returns the paths that conflict when merging theirs into ours,
// computed without touching any worktree or ref.
func (e *Env) Conflicts(ctx context.Context, ours, theirs string) ([]string, error) {
	_, conflicts, err := e.Repo.MergeTree(ctx, ours, theirs)
	return conflicts, err
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// mergeEnv returns base with vars set (replacing any earlier values).
func mergeEnv(base []string, vars map[string]string) []string {
	out := make([]string, 0, len(base)+len(vars))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := vars[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	return out
}
