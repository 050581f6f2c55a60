package statefile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/orch-hooks/orch-hooks/testproc"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the crashing writer and the lock holder: it
// runs a helper instead of the tests when STATEFILE_HELPER is set.
func TestMain(m *testing.M) {
	switch os.Getenv("STATEFILE_HELPER") {
	case "writer":
		writerLoop(os.Getenv("STATEFILE_PATH"))
	case "holder":
		holdLock(os.Getenv("STATEFILE_PATH"))
	case "handoff":
		handOffHolder(os.Getenv("STATEFILE_PATH"))
	default:
		os.Exit(m.Run())
	}
}

// record returns a large, self-checking record: n copies of one letter with
// a trailer naming the letter and the count, so any mix of two versions or a
// short write is detectable.
func record(letter byte, n int) []byte {
	return append(bytes.Repeat([]byte{letter}, n), fmt.Sprintf("\n%c %d\n", letter, n)...)
}

func checkRecord(data []byte) error {
	i := bytes.LastIndexByte(bytes.TrimSuffix(data, []byte("\n")), '\n')
	if i < 0 {
		return fmt.Errorf("no trailer in %d bytes", len(data))
	}
	var letter byte
	var n int
	if _, err := fmt.Sscanf(string(data[i+1:]), "%c %d\n", &letter, &n); err != nil {
		return fmt.Errorf("bad trailer %q: %v", data[i+1:], err)
	}
	if !bytes.Equal(data, record(letter, n)) {
		return fmt.Errorf("torn record: trailer says %d x %c, body differs", n, letter)
	}
	return nil
}

// writerLoop replaces the record forever with alternating versions of
// different sizes, printing a line after each, until it is killed.
func writerLoop(path string) {
	out := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		letter := byte('a' + i%26)
		if err := Replace(path, record(letter, 64<<10+i%7*4096)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(out, i)
		out.Flush()
	}
}

func holdLock(path string) {
	unlock, err := Lock(context.Background(), path)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	defer unlock()
	fmt.Println("locked")
	// Hold until the parent closes stdin (or kills us).
	bufio.NewReader(os.Stdin).ReadString('\n')
}

func helper(t *testing.T, kind, path string) (*exec.Cmd, *bufio.Reader, func()) {
	t.Helper()
	p := testproc.Start(t, append(os.Environ(), "STATEFILE_HELPER="+kind, "STATEFILE_PATH="+path))
	return p.Cmd, p.Out, func() { p.In.Close() }
}

// A writer killed with SIGKILL at any point leaves the old record or the new
// one, never a torn one.
func TestReplaceSurvivesSIGKILL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rec")
	if err := Replace(path, record('z', 1000)); err != nil {
		t.Fatal(err)
	}
	rounds := 25
	if testing.Short() {
		rounds = 5
	}
	for r := 0; r < rounds; r++ {
		cmd, out, _ := helper(t, "writer", path)
		// Let it complete a varying number of writes, then kill it while it
		// is (most likely) in the middle of the next.
		for i := 0; i <= r%5; i++ {
			if _, err := out.ReadString('\n'); err != nil {
				t.Fatalf("writer: %v", err)
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkRecord(data); err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
	}
	// Temp files a killed writer left behind are recognisable as such.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "rec" && !IsTemp(e.Name()) {
			t.Errorf("unexpected file %s", e.Name())
		}
	}
}

func TestCreateIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec")
	created, err := Create(path, []byte("first"))
	if err != nil || !created {
		t.Fatalf("first Create = %v, %v", created, err)
	}
	created, err = Create(path, []byte("second"))
	if err != nil || created {
		t.Fatalf("second Create = %v, %v; want false, nil", created, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("content %q, want the first", b)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("%d files left, want only the record", len(ents))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm()&0o022 != 0 {
		t.Fatalf("record mode %v is group or world writable", fi.Mode())
	}
}

func TestLockExcludesAndTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := Lock(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while held: %v, want ErrLocked", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := Lock(ctx, path); !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("Lock while held: %v, want ErrLockTimeout", err)
	}
	unlock()
	u2, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after unlock: %v", err)
	}
	u2()
}

// A lock held by another process excludes this one, and the kernel drops it
// when that process is killed.
func TestLockAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	cmd, out, _ := helper(t, "holder", path)
	if line, err := out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "locked" {
		t.Fatalf("holder: %q, %v", line, err)
	}
	if _, err := TryLock(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock while another process holds it: %v, want ErrLocked", err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	unlock, err := Lock(context.Background(), path)
	if err != nil {
		t.Fatalf("Lock after holder was killed: %v", err)
	}
	unlock()
}

// A waiter gets the lock as soon as the holder releases it.
func TestLockHandOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	_, out, release := helper(t, "holder", path)
	if line, _ := out.ReadString('\n'); strings.TrimSpace(line) != "locked" {
		t.Fatalf("holder: %q", line)
	}
	got := make(chan error, 1)
	go func() {
		unlock, err := Lock(context.Background(), path)
		if err == nil {
			unlock()
		}
		got <- err
	}()
	release()
	if err := <-got; err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
}
