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
//
// The branch's tip and the target's are resolved once, first, and every
// gate judges that pair (commits_ahead and mergeable by commit id, not by
// ref); each result names them (GateResult.Commit, .Target). Gates that
// look at the worktree (clean_worktree, cmd:) see the branch checked out
// there, so if the branch moved while the gates ran they may have judged
// another commit: such a result is turned into a failure that says so.
func (e *Env) EvaluateGates(ctx context.Context, in GateInput) []gitstate.GateResult {
	out := make([]gitstate.GateResult, 0, len(in.Stage.Gates))
	if len(in.Stage.Gates) == 0 {
		return out
	}
	commit, _ := e.Repo.ResolveCommit(ctx, "refs/heads/"+in.Branch)
	target, _ := e.Repo.ResolveCommit(ctx, "refs/heads/"+in.Target)
	for _, g := range in.Stage.Gates {
		passed, detail := e.evaluateGate(ctx, g, in, commit, target)
		out = append(out, gitstate.GateResult{Name: g, Passed: passed, Detail: detail, At: time.Now().UTC(), Commit: commit, Target: target})
	}
	if now, _ := e.Repo.ResolveCommit(ctx, "refs/heads/"+in.Branch); now != commit {
		for i := range out {
			if out[i].Passed && (out[i].Name == config.GateCleanWorktree || strings.HasPrefix(out[i].Name, config.GateCmdPrefix)) {
				out[i].Passed = false
				out[i].Detail = fmt.Sprintf("%s moved from %s to %s while the gates ran, so this check may not have seen %s", in.Branch, shortID(commit), shortID(now), shortID(commit))
			}
		}
	}
	return out
}

// JudgedCommit returns the commit every gate in rs judged and passed, or ""
// when a gate failed, the gates disagree, or there are none.
func JudgedCommit(rs []gitstate.GateResult) string {
	var c string
	for i, r := range rs {
		if !r.Passed || r.Commit == "" || (i > 0 && r.Commit != c) {
			return ""
		}
		c = r.Commit
	}
	return c
}

func shortID(id string) string {
	if id == "" {
		return "(none)"
	}
	if len(id) > 12 {
		return id[:12]
	}
	return id
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

// evaluateGate judges one gate; commit and target are the branch's and the
// target's tips resolved for this evaluation ("" when missing).
func (e *Env) evaluateGate(ctx context.Context, gate string, in GateInput, commit, target string) (bool, string) {
	switch {
	case gate == config.GateCommitsAhead:
		if err := missingRefs(in, commit, target); err != nil {
			return false, err.Error()
		}
		n, err := gitstate.Git(ctx, e.gitDir(), "rev-list", "--count", target+".."+commit)
		if err != nil {
			return false, err.Error()
		}
		if n == "0" {
			return false, fmt.Sprintf("%s has no commits beyond %s", in.Branch, in.Target)
		}
		return true, fmt.Sprintf("%s commit(s) beyond %s", n, in.Target)

	case gate == config.GateMergeable:
		if err := missingRefs(in, commit, target); err != nil {
			return false, err.Error()
		}
		conflicts, err := e.Conflicts(ctx, target, commit)
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

// missingRefs says which of the branch and the target did not resolve to a
// commit. On git 2.39 merge-tree exits 1 for an unknown ref as it does for
// a conflict, so this comes first.
func missingRefs(in GateInput, commit, target string) error {
	if commit == "" {
		return fmt.Errorf("%s does not exist", in.Branch)
	}
	if target == "" {
		return fmt.Errorf("%s does not exist", in.Target)
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
