package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// killGrace is how long a process group has between TERM and KILL.
const killGrace = 5 * time.Second

// shellCmd prepares `sh -c script` in dir, in a process group of its own so
// that it and everything it starts can be signalled together. When ctx ends
// the group gets TERM, then KILL after killGrace.
func shellCmd(ctx context.Context, dir, script string, env []string, out io.Writer) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		go func() {
			time.Sleep(killGrace)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}()
		return nil
	}
	cmd.WaitDelay = killGrace + time.Second
	return cmd
}

// exitStatus turns the result of Wait into an exit code: the code for a
// normal exit, 128+N for death by signal N (as shells report it).
func exitStatus(err error) (code int, detail string, ok bool) {
	if err == nil {
		return 0, "exit code 0", true
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return -1, err.Error(), false
	}
	if ws, isWS := ee.Sys().(syscall.WaitStatus); isWS && ws.Signaled() {
		return 128 + int(ws.Signal()), fmt.Sprintf("killed by signal %s", ws.Signal()), true
	}
	return ee.ExitCode(), fmt.Sprintf("exit code %d", ee.ExitCode()), true
}

// recordedStatus is exitStatus for the stage command run under its exit
// recorder (exitRecorder), which exits with the command's status: 128+N
// reports death by signal N, as shells report it (and as Wait reports the
// command itself killed), so the detail names the signal.
func recordedStatus(err error) (code int, detail string) {
	code, detail, ok := exitStatus(err)
	if sig := syscall.Signal(code - 128); ok && err != nil && code > 128 && code < 128+65 && !strings.HasPrefix(detail, "killed") {
		detail = fmt.Sprintf("killed by signal %s", sig)
	}
	return code, detail
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string { return string(t.buf) }
