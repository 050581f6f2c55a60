package statefile

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte("x"), n), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const max = 1000
	for _, n := range []int{0, 1, max - 1, max} {
		p := write("ok-"+strconv.Itoa(n), n)
		got, err := ReadFile(p, max)
		if err != nil || len(got) != n {
			t.Errorf("ReadFile of %d bytes, cap %d: %d bytes, %v", n, max, len(got), err)
		}
	}
	for _, n := range []int{max + 1, 20 << 20} {
		p := write("big-"+strconv.Itoa(n), n)
		got, err := ReadFile(p, max)
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("ReadFile of %d bytes, cap %d: %d bytes, %v; want ErrTooLarge", n, max, len(got), err)
		}
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Path != p {
			t.Errorf("error %v is not an *fs.PathError naming %s", err, p)
		}
		msg := err.Error()
		for _, want := range []string{p, strconv.Itoa(n) + " bytes", strconv.Itoa(max) + "-byte cap", "remove or restore it"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not mention %q", msg, want)
			}
		}
		if got != nil {
			t.Errorf("a refused file returned %d bytes", len(got))
		}
	}
}

func TestReadFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadFile(filepath.Join(dir, "missing"), MaxSizeDefault); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := ReadFile(dir, MaxSizeDefault); err == nil || errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), dir) {
		t.Errorf("a directory: %v, want an error naming it", err)
	}
}

// TestReadFileRefusesNonRegular: a FIFO, a socket, a directory or a symlink
// (even to a good file) at a state path is refused at once — never waited
// on for a writer, never followed — with an error that says what it is and
// the fix.
func TestReadFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeTestFile(t, good, "content")
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Skipf("bind a unix socket at %s: %v", sock, err)
	}
	syscall.Close(fd)
	for path, kind := range map[string]string{fifo: "FIFO", link: "symlink", sub: "directory", sock: "socket"} {
		done := make(chan error, 1)
		go func() { _, err := ReadFile(path, MaxSizeDefault); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), "remove it") || !strings.Contains(err.Error(), path) {
				t.Errorf("ReadFile of a %s: %v; want ErrNotRegular naming it, the path and the fix", kind, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("ReadFile of a %s still blocked after 5 s", kind)
		}
		for _, flag := range []int{os.O_RDONLY, os.O_WRONLY | os.O_APPEND | os.O_CREATE, os.O_RDWR | os.O_CREATE} {
			if f, err := Open(path, flag, 0o600); !errors.Is(err, ErrNotRegular) {
				if f != nil {
					f.Close()
				}
				t.Errorf("Open(%s, %#o): %v; want ErrNotRegular", kind, flag, err)
			}
		}
		if _, err := TryLock(path); !errors.Is(err, ErrNotRegular) {
			t.Errorf("TryLock on a %s: %v; want ErrNotRegular", kind, err)
		}
	}
	if b, _ := os.ReadFile(good); string(b) != "content" {
		t.Errorf("the symlink's target changed: %q", b)
	}
}

// TestOpenCreatesNothingThroughSymlink: a dangling symlink at a path that
// Open would create is refused; nothing appears where it points.
func TestOpenCreatesNothingThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "outside")
	link := filepath.Join(dir, "x.lock")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(link, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Open through a dangling symlink: %v; want ErrNotRegular", err)
	}
	if _, err := Lock(context.Background(), link); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Lock through a dangling symlink: %v; want ErrNotRegular", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file was created where the symlink points: %v", err)
	}
}

// TestOpenMode: a file Open creates has exactly the mode asked for,
// whatever the umask; an existing file keeps its own.
func TestOpenMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	p := filepath.Join(t.TempDir(), "log")
	for _, mode := range []fs.FileMode{0o600, 0o640} {
		os.Remove(p)
		f, err := Open(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, mode)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if fi, _ := os.Stat(p); fi.Mode().Perm() != mode {
			t.Errorf("created with mode %v, want %v", fi.Mode().Perm(), mode)
		}
	}
	f, err := Open(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Errorf("an existing file's mode became %v", fi.Mode().Perm())
	}
}

func writeTestFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFullHint: a write that failed for want of space says what to do.
func TestFullHint(t *testing.T) {
	for _, err := range []error{syscall.ENOSPC, &fs.PathError{Op: "write", Path: "/x", Err: syscall.EDQUOT}} {
		if h := fullHint(err, "/state/jobs/"); !strings.Contains(h, "free space") || !strings.Contains(h, "/state/jobs") {
			t.Errorf("fullHint(%v) = %q", err, h)
		}
	}
	if h := fullHint(syscall.EACCES, "/state"); h != "" {
		t.Errorf("fullHint(EACCES) = %q, want none", h)
	}
}

// TestReadFileFollow: orch.toml may be a symlink (followed), never a FIFO
// (refused at once, not waited on).
func TestReadFileFollow(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	writeTestFile(t, good, "content")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFileFollow(link, MaxSizeDefault); err != nil || string(b) != "content" {
		t.Errorf("ReadFileFollow through a symlink: %q, %v", b, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	fifoLink := filepath.Join(dir, "fifo-link")
	os.Symlink(fifo, fifoLink)
	for _, p := range []string{fifo, fifoLink} {
		if _, err := ReadFileFollow(p, MaxSizeDefault); !errors.Is(err, ErrNotRegular) {
			t.Errorf("ReadFileFollow(%s): %v; want ErrNotRegular", p, err)
		}
	}
}
