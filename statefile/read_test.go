package statefile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
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

// TestReadFileUnsized: a file with no size (a pipe) is read up to the cap
// and no further.
func TestReadFileUnsized(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, c := range []struct {
		n       int
		tooLong bool
	}{{10, false}, {100, false}, {101, true}, {1 << 20, true}} {
		done := make(chan error, 1)
		go func() {
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				done <- err
				return
			}
			_, err = f.Write(bytes.Repeat([]byte("y"), c.n))
			f.Close()
			if errors.Is(err, syscall.EPIPE) {
				err = nil // the reader stopped at its cap
			}
			done <- err
		}()
		got, err := ReadFile(fifo, 100)
		if c.tooLong != errors.Is(err, ErrTooLarge) || (!c.tooLong && (err != nil || len(got) != c.n)) {
			t.Errorf("pipe of %d bytes, cap 100: %d bytes, %v", c.n, len(got), err)
		}
		if err := <-done; err != nil {
			t.Errorf("writer: %v", err)
		}
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
