package lease

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// The file system's wake-up is what waiters rely on here; a watch that
// silently fell back to polling would still pass the behavioural tests. A
// waiter is woken by the removal of its target's record and by nothing
// else.
func TestDirWatchWakesOnlyOnRemoval(t *testing.T) {
	skipWithoutNotify(t)
	dir := filepath.Join(t.TempDir(), "leases")
	w := watchDir(dir)
	if w == nil {
		t.Fatal("watchDir returned nil where the file system can notify")
	}
	defer w.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Changes that cannot free the lease of x do not wake the waiter.
	for _, change := range []func() error{
		func() error { return os.WriteFile(filepath.Join(dir, "x.toml.tmp"), nil, 0o644) },
		func() error { return os.Rename(filepath.Join(dir, "x.toml.tmp"), filepath.Join(dir, "x.toml")) },
		func() error { return os.WriteFile(filepath.Join(dir, "y.toml"), nil, 0o644) },
		func() error { return os.Remove(filepath.Join(dir, "y.toml")) },
	} {
		if err := change(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	w.wait(ctx, 30*time.Millisecond, "x.toml")
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("woken after %s by changes that cannot free x's lease", d)
	}
	// Its removal does, even with an hour to wait.
	if err := os.Remove(filepath.Join(dir, "x.toml")); err != nil {
		t.Fatal(err)
	}
	w.wait(ctx, time.Hour, "x.toml")
	if ctx.Err() != nil {
		t.Fatal("wait slept through the removal of the record")
	}
	// Nothing new: the next wait ends by its duration, not by an event.
	start = time.Now()
	w.wait(ctx, 20*time.Millisecond, "x.toml")
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("wait returned after %s with no change: events were not drained", d)
	}
	if !w.alive() {
		t.Fatal("the watch is not alive after waits that ended normally")
	}
}

// The removal of the leases directory itself wakes a waiter (there is
// nothing left to wait on: look).
func TestDirWatchWakesOnDirRemoval(t *testing.T) {
	skipWithoutNotify(t)
	dir := filepath.Join(t.TempDir(), "leases")
	w := watchDir(dir)
	if w == nil {
		t.Fatal("watchDir returned nil where the file system can notify")
	}
	defer w.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	w.wait(ctx, time.Hour, "x.toml")
	if ctx.Err() != nil {
		t.Fatal("wait slept through the removal of the directory")
	}
}

// A watch that ended (closed under the waiter, as when the file system
// drops it) returns at once and says it is no longer alive, so that Acquire
// polls instead of spinning on it.
func TestDirWatchEnded(t *testing.T) {
	skipWithoutNotify(t)
	w := watchDir(filepath.Join(t.TempDir(), "leases"))
	if w == nil {
		t.Fatal("watchDir returned nil where the file system can notify")
	}
	w.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w.wait(ctx, time.Hour, "x.toml")
	if ctx.Err() != nil {
		t.Fatal("wait on an ended watch slept")
	}
	if w.alive() {
		t.Fatal("an ended watch says it is alive")
	}
}

// skipWithoutNotify skips where fsnotify cannot start at all (the per-user
// limit of inotify instances reached): waiters poll there (WaitPollMax).
func skipWithoutNotify(t *testing.T) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Skipf("no file-system notifications here (%v): waiters poll (WaitPollMax)", err)
	}
	w.Close()
}
