package gitstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// GitEnv is the environment of every git process orch-hooks starts: hooks
// of orch-hooks do nothing when ORCH_HOOKS=0 (no recursion), and variables
// that would point git at another repository are removed.
func GitEnv() []string {
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX", "ORCH_HOOKS":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "ORCH_HOOKS=0")
}

// GitError is a git command that exited non-zero.
type GitError struct {
	Args     []string
	ExitCode int
	Stderr   string
}

func (e *GitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = fmt.Sprintf("exit status %d", e.ExitCode)
	}
	return fmt.Sprintf("git %s: %s", strings.Join(e.Args, " "), msg)
}

// Git runs git with args in dir and returns its stdout with the trailing
// newline removed. A non-zero exit is a *GitError carrying stderr.
func Git(ctx context.Context, dir string, args ...string) (string, error) {
	out, err := GitBytes(ctx, dir, nil, args...)
	return strings.TrimRight(string(out), "\n"), err
}

// GitEnvOut is Git with extra environment variables and optional stdin.
func GitEnvOut(ctx context.Context, dir string, env []string, stdin []byte, args ...string) (string, error) {
	out, err := gitBytes(ctx, dir, env, stdin, args...)
	return strings.TrimRight(string(out), "\n"), err
}

// GitBytes is Git with optional stdin and raw output.
func GitBytes(ctx context.Context, dir string, stdin []byte, args ...string) ([]byte, error) {
	return gitBytes(ctx, dir, nil, stdin, args...)
}

func gitBytes(ctx context.Context, dir string, env []string, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(GitEnv(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &GitError{Args: args, ExitCode: ee.ExitCode(), Stderr: stderr.String()}
	}
	if err != nil {
		return nil, fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return stdout.Bytes(), nil
}
