package statefile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestLockGoroutinesExclude: goroutines of one process locking one path
// never hold it at the same time. Each acquisition has its own handle; one
// *flock.Flock shared between them would answer "locked" to all of them.
func TestLockGoroutinesExclude(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	var holders, overlaps, acquired atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				var unlock func()
				var err error
				if (g+i)%2 == 0 {
					unlock, err = Lock(context.Background(), path)
				} else if unlock, err = TryLock(path); errors.Is(err, ErrLocked) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				acquired.Add(1)
				if holders.Add(1) != 1 {
					overlaps.Add(1)
				}
				runtime.Gosched()
				holders.Add(-1)
				unlock()
			}
		}(g)
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d acquisitions found another goroutine holding the lock", n)
	}
	if acquired.Load() < 8*25/2 {
		t.Errorf("only %d acquisitions: every Lock call should have got it", acquired.Load())
	}
}

// TestLockRefusesNonRegular: Lock and TryLock on a FIFO, a socket, a
// directory, a symlink to a good lock file or a dangling symlink return
// ErrNotRegular at once, naming it and the fix: never a wait until the
// deadline, never a lock taken through the link.
func TestLockRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.lock")
	unlockGood, err := Lock(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	defer unlockGood()
	fifo := filepath.Join(dir, "fifo.lock")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	link := filepath.Join(dir, "link.lock")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	dangling := filepath.Join(dir, "dangling.lock")
	if err := os.Symlink(outside, dangling); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub.lock")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock.lock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Skipf("bind a unix socket at %s: %v", sock, err)
	}
	syscall.Close(fd)
	for path, kind := range map[string]string{fifo: "FIFO", link: "symlink", dangling: "symlink", sub: "directory", sock: "socket"} {
		check := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), "remove it") || !strings.Contains(err.Error(), path) {
				t.Errorf("%s on a %s: %v; want ErrNotRegular naming it, the path and the fix", what, kind, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		_, err := Lock(ctx, path)
		cancel()
		check("Lock", err)
		if d := time.Since(start); d > time.Second {
			t.Errorf("Lock on a %s took %v: it waited", kind, d)
		}
		_, err = TryLock(path)
		check("TryLock", err)
	}
	if _, err := os.Lstat(outside); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a file was created where the dangling symlink points: %v", err)
	}
}

// TestLockChecksWhatItLocked: a FIFO at a lock file's name opens
// read-write without blocking, and flock(2) locks it; the descriptor locked
// is checked, so the FIFO is refused and left unlocked. One that another
// holds a flock on is refused too, not waited on.
func TestLockChecksWhatItLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, err := TryLock(path); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "FIFO") {
		t.Fatalf("TryLock on a FIFO: %v; want ErrNotRegular naming a FIFO", err)
	}
	// Nothing holds the FIFO's lock now: a flock on it succeeds.
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the refused FIFO was left locked: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := Lock(ctx, path); !errors.Is(err, ErrNotRegular) || time.Since(start) > time.Second {
		t.Errorf("Lock on a FIFO another holds a flock on: %v after %v; want ErrNotRegular at once", err, time.Since(start))
	}
}

// TestLockFileMode: a lock file Lock or TryLock creates has Mode exactly,
// whatever the umask; an existing one keeps its own.
func TestLockFileMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, take := range []func(string) (func(), error){
		func(p string) (func(), error) { return Lock(context.Background(), p) },
		TryLock,
	} {
		p := filepath.Join(dir, "x.lock")
		os.Remove(p)
		unlock, err := take(p)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != Mode {
			t.Errorf("lock file created with mode %v (%v), want %v", fi.Mode().Perm(), err, Mode)
		}
	}
	p := filepath.Join(dir, "own.lock")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("an existing lock file's mode became %v", fi.Mode().Perm())
	}
}

// TestLockDeadline: a wait on a held lock ends at the context's deadline,
// not before and not long after, with ErrLockTimeout.
func TestLockDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	const wait = 150 * time.Millisecond
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err = Lock(ctx, path)
	d := time.Since(start)
	if !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Lock on a held lock: %v; want ErrLockTimeout naming the path", err)
	}
	if d < wait || d > wait+time.Second {
		t.Errorf("Lock gave up after %v; want the deadline, %v", d, wait)
	}
}

func TestPollInterval(t *testing.T) {
	for _, c := range []struct{ waited, want time.Duration }{
		{0, lockPollMin},
		{time.Millisecond, lockPollMin},
		{20 * time.Millisecond, 20 * time.Millisecond / lockPollShare},
		{time.Second, lockPollMax},
	} {
		if got := pollInterval(c.waited); got != c.want {
			t.Errorf("pollInterval(%v) = %v, want %v", c.waited, got, c.want)
		}
	}
}
