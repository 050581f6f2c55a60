// Package testproc runs the test binary again as a helper process, the way
// tests of locks, leases and crashes get real processes to race, hold and
// kill: the package's TestMain sees the helper's environment variable and
// runs the helper instead of the tests.
package testproc

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// Proc is a helper process whose stdin and stdout are piped to the test;
// its stderr is the test's.
type Proc struct {
	Cmd *exec.Cmd
	In  io.WriteCloser
	Out *bufio.Reader
	// WaitAtCleanup makes cleanup close stdin and wait for the helper to
	// exit by itself (it must, on end of input), killing it only when the
	// test failed; otherwise cleanup kills it.
	WaitAtCleanup bool

	stop sync.Once
}

// Start runs os.Args[0], running no test, with env as its whole
// environment, and registers Stop as a cleanup of t.
func Start(t testing.TB, env []string) *Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	return StartCommand(t, cmd)
}

// StartCommand starts cmd with its stdin and stdout piped to the test (its
// stderr the test's unless set), for a helper that runs under another
// program (unshare, a shell), and registers Stop as a cleanup of t.
func StartCommand(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{Cmd: cmd, In: in, Out: bufio.NewReader(out)}
	t.Cleanup(func() { p.stop.Do(func() { p.end(t.Failed()) }) })
	return p
}

// Close closes the helper's stdin and waits for it to exit by itself (it
// must, on end of input), returning how it exited; once only, and before
// the cleanup Start registered, which then does nothing.
func (p *Proc) Close() error {
	err := errors.New("helper already stopped")
	p.stop.Do(func() { p.In.Close(); err = p.Cmd.Wait() })
	return err
}

// Stop closes the helper's stdin, kills it and waits for it; once only, and
// before the cleanup Start registered, which then does nothing.
func (p *Proc) Stop() { p.stop.Do(func() { p.end(true) }) }

// Pid is the helper's process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

func (p *Proc) end(kill bool) {
	p.In.Close()
	if kill || !p.WaitAtCleanup {
		p.Cmd.Process.Kill()
	}
	p.Cmd.Wait()
}
