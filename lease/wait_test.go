package lease

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The kernel wake-up is what waiters rely on here; a watch that silently
// fell back to polling would still pass the behavioural tests. A waiter is
// woken by the removal of its target's record and by nothing else.
func TestDirWatchWakesOnlyOnRemoval(t *testing.T) {
	if _, err := os.Stat("/proc/sys/fs/inotify"); err != nil {
		t.Skip("no inotify on this system: waiters poll (WaitPollMax)")
	}
	dir := filepath.Join(t.TempDir(), "leases")
	w := watchDir(dir)
	if w == nil {
		t.Fatal("watchDir returned nil with inotify available")
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
}
