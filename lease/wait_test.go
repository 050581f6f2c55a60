package lease

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The kernel wake-up is what waiters rely on here; a watch that silently
// fell back to polling would still pass the behavioural tests.
func TestDirWatchWakesOnRemoveAndRename(t *testing.T) {
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
	for _, change := range []func() error{
		func() error { return os.WriteFile(filepath.Join(dir, "x.tmp"), nil, 0o644) }, // no event: not a rename
		func() error { return os.Rename(filepath.Join(dir, "x.tmp"), filepath.Join(dir, "x")) },
		func() error { return os.Remove(filepath.Join(dir, "x")) },
	} {
		if err := change(); err != nil {
			t.Fatal(err)
		}
	}
	// Two events are queued; one wait drains both.
	w.wait(ctx, time.Hour)
	if ctx.Err() != nil {
		t.Fatal("wait slept through a rename and a remove")
	}
	// Nothing new: the next wait ends by its duration, not by an event.
	start := time.Now()
	w.wait(ctx, 20*time.Millisecond)
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("wait returned after %s with no change: events were not drained", d)
	}
}
