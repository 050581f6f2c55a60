package pipeline

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recorder starts command under exitRecorder as Run does (its own process
// group, the gate on stdin), writing its status to exitPath; open says
// "go" (or, with open false, closes the gate: the monitor died first).
func recorder(t testing.TB, dir, exitPath, command string, env []string, open bool) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	var out strings.Builder
	cmd := exec.Command("sh", "-c", exitRecorder, "orch-run", exitPath, command)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	gate, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = gate
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gate.Close()
	if open {
		io.WriteString(w, "go\n")
	}
	w.Close()
	return cmd, &out
}

func readExit(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// TestExitRecorder: what the command sees is what a plain `sh -c` gives
// it (any bytes of the command, $0, no arguments, the environment), and
// the recorder writes the status the monitor would have recorded: the
// exit code, 128+N for a signal, the command's own answer to a TERM sent
// to the whole group (the recorder outlives it); nothing when the gate
// never opened (the command never runs) and never through a symlink.
func TestExitRecorder(t *testing.T) {
	dir := t.TempDir()
	exitPath := filepath.Join(dir, "exit")
	env := append(os.Environ(), "ORCH_JOB_ID=j1")
	run := func(t *testing.T, command string, open bool) (int, string, string) {
		os.Remove(exitPath)
		cmd, out := recorder(t, dir, exitPath, command, env, open)
		code, _ := recordedStatus(cmd.Wait())
		return code, readExit(t, exitPath), out.String()
	}
	t.Run("command bytes and environment", func(t *testing.T) {
		command := `printf '%s|%s|%s|%s\n' "$0" "$#" "$ORCH_JOB_ID" 'it''s "$HOME" ` + "`x`" + ` \'; exit 4`
		code, rec, out := run(t, command, true)
		if want := "sh|0|j1|its \"$HOME\" `x` \\\n"; out != want {
			t.Errorf("the command printed %q, want %q", out, want)
		}
		if code != 4 || rec != "4\n" {
			t.Errorf("recorder exit %d, file %q; want 4 and \"4\\n\"", code, rec)
		}
	})
	t.Run("killed by a signal", func(t *testing.T) {
		code, rec, _ := run(t, `kill -KILL $$`, true)
		if code != 137 || rec != "137\n" {
			t.Errorf("recorder exit %d, file %q; want 137 (128+SIGKILL) both", code, rec)
		}
	})
	t.Run("TERM to the group reaches the command", func(t *testing.T) {
		os.Remove(exitPath)
		ready := filepath.Join(dir, "ready")
		os.Remove(ready)
		cmd, _ := recorder(t, dir, exitPath, `trap 'exit 7' TERM; touch `+ready+`; while :; do sleep 0.01; done`, env, true)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the command did not start")
			}
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) // as forwardSignals does
		code, detail := recordedStatus(cmd.Wait())
		if rec := readExit(t, exitPath); code != 7 || rec != "7\n" {
			t.Errorf("recorder exit %d (%s), file %q; want the command's own 7", code, detail, rec)
		}
	})
	t.Run("gate never opened", func(t *testing.T) {
		marker := filepath.Join(dir, "ran")
		code, rec, _ := run(t, "touch "+marker, false)
		if _, err := os.Stat(marker); err == nil {
			t.Error("the command ran though the gate never opened")
		}
		if code != 125 || rec != "" {
			t.Errorf("recorder exit %d, file %q; want 125 and no file", code, rec)
		}
	})
	t.Run("no write through a symlink", func(t *testing.T) {
		target := filepath.Join(dir, "target")
		os.WriteFile(target, []byte("keep"), 0o644)
		os.Remove(exitPath)
		if err := os.Symlink(target, exitPath); err != nil {
			t.Fatal(err)
		}
		cmd, _ := recorder(t, dir, exitPath, "exit 0", env, true)
		cmd.Wait()
		if b, _ := os.ReadFile(target); string(b) != "keep" {
			t.Errorf("the recorder wrote through a symlink: target holds %q", b)
		}
		os.Remove(exitPath)
	})
}

// BenchmarkCommandStart measures what the exit-status recorder adds to
// starting a stage command: an instant command started and waited for,
// as today's monitor did (plain `sh -c`) and under the recorder (its gate
// opened at once, the status written). Compare the two in the same run.
func BenchmarkCommandStart(b *testing.B) {
	dir := b.TempDir()
	exitPath := filepath.Join(dir, "exit")
	b.Run("plain", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			cmd := exec.Command("sh", "-c", "true")
			cmd.Dir = dir
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("recorded", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			os.Remove(exitPath)
			cmd, _ := recorder(b, dir, exitPath, "true", nil, true)
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
