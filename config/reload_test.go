package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newTestReloader returns a Reloader on a file with content whose clock
// runs ten seconds ahead: every write is settled and out of the racy
// window unless a test says otherwise.
func newTestReloader(t *testing.T, content string) (*Reloader, string) {
	t.Helper()
	clearEnv(t)
	p := write(t, content)
	r, err := NewReloader(p, false)
	if err != nil {
		t.Fatal(err)
	}
	r.nowFunc = func() time.Time { return time.Now().Add(10 * time.Second) }
	r.readAt = r.nowFunc()
	return r, p
}

func rewrite(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func check(t *testing.T, r *Reloader, want Change) error {
	t.Helper()
	got, err := r.Check()
	if got != want {
		t.Fatalf("Check() = %v (err %v), want %v", got, err, want)
	}
	return err
}

func TestReloaderAppliesAChangeOnce(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	check(t, r, Unchanged)
	old := r.Config()
	rewrite(t, p, "max_concurrency = 1\n")
	check(t, r, Reloaded)
	if r.Config().MaxConcurrency != 1 || r.Err() != nil {
		t.Fatalf("after reload: max_concurrency %d, err %v", r.Config().MaxConcurrency, r.Err())
	}
	if diff := cmp.Diff([]string{"max_concurrency 2 → 1"}, Changes(old, r.Config())); diff != "" {
		t.Errorf("Changes (-want +got):\n%s", diff)
	}
	check(t, r, Unchanged)
	// Touched, or rewritten with the same bytes: nothing to say.
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		t.Fatal(err)
	}
	check(t, r, Unchanged)
}

func TestReloaderKeepsTheLastGoodConfig(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	rewrite(t, p, "max_concurrency = 2\n[reaper]\ninterval = 5\n")
	err := check(t, r, Rejected)
	var ce *Error
	if !errors.As(err, &ce) || ce.File != p || ce.Line != 3 || ce.Key != "reaper.interval" {
		t.Fatalf("error %#v does not locate file:line:key", err)
	}
	if r.Config().MaxConcurrency != 2 || r.Err() == nil {
		t.Fatalf("after a bad file: max_concurrency %d, err %v; want the last good config and the error", r.Config().MaxConcurrency, r.Err())
	}
	// Said once: the same bad file again is no news, but still the error.
	if err := check(t, r, Unchanged); err == nil {
		t.Fatal("Check of the same bad file returned no error")
	}
	// Another mistake is news.
	rewrite(t, p, "max_concurrency = 0\n")
	check(t, r, Rejected)
	// Fixed: reloaded, error gone.
	rewrite(t, p, "max_concurrency = 3\n")
	if err := check(t, r, Reloaded); err != nil {
		t.Fatal(err)
	}
	if r.Config().MaxConcurrency != 3 || r.Err() != nil {
		t.Fatalf("after the fix: max_concurrency %d, err %v", r.Config().MaxConcurrency, r.Err())
	}
}

// A process keeps its state where it started: turning remote mode on (or
// off, or to another remote) under it is refused like a bad file, never
// applied, so a running watch cannot go on acting on local state as if it
// were the shared one.
func TestReloaderRefusesToSwitchRemote(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	rewrite(t, p, "max_concurrency = 3\n[remote]\nname = \"origin\"\n")
	err := check(t, r, Rejected)
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "remote.name" || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("error %v: want remote.name named and a restart asked for", err)
	}
	if c := r.Config(); c.MaxConcurrency != 2 || c.Remote.Name != "" {
		t.Fatalf("after the switch: max_concurrency %d, remote %q; want the last good config", c.MaxConcurrency, c.Remote.Name)
	}
	// The old value back: the rest of the change applies.
	rewrite(t, p, "max_concurrency = 3\n")
	if err := check(t, r, Reloaded); err != nil {
		t.Fatal(err)
	}
	if r.Config().MaxConcurrency != 3 {
		t.Fatalf("max_concurrency %d after the remote was put back, want 3", r.Config().MaxConcurrency)
	}
}

// A file found empty after it had settings is what a writer that
// truncates, then writes, leaves between the two (for longer than the
// settle delay on a loaded machine): refused, never taken as the defaults
// (no stages). A file empty from the start stays acceptable.
func TestReloaderEmptiedFileKeepsConfig(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	rewrite(t, p, "")
	if err := check(t, r, Rejected); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("error %v, want the file called empty", err)
	}
	if r.Config().MaxConcurrency != 2 {
		t.Fatalf("max_concurrency %d after the file was emptied, want the last good 2", r.Config().MaxConcurrency)
	}
	rewrite(t, p, "max_concurrency = 2\n")
	if err := check(t, r, Reloaded); err != nil {
		t.Fatal(err)
	}

	e, ep := newTestReloader(t, "\n")
	rewrite(t, ep, "max_concurrency = 3\n")
	check(t, e, Reloaded)
	rewrite(t, ep, "")
	if err := check(t, e, Rejected); err == nil {
		t.Fatal("emptied after settings: accepted")
	}
	f, fp := newTestReloader(t, "")
	rewrite(t, fp, " \n")
	if err := check(t, f, Reloaded); err != nil {
		t.Fatalf("a file empty from the start, still empty: %v", err)
	}
}

func TestReloaderFileGoneKeepsConfig(t *testing.T) {
	r, p := newTestReloader(t, "[[stages]]\nname = \"a\"\nrun = \"true\"\n")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	err := check(t, r, Rejected)
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("err = %v, want the file named gone", err)
	}
	if len(r.Config().Stages) != 1 {
		t.Fatal("a removed file dropped the stages")
	}
	check(t, r, Unchanged)
	rewrite(t, p, "[[stages]]\nname = \"b\"\nrun = \"true\"\n")
	check(t, r, Reloaded)
	if r.Config().Stages[0].Name != "b" {
		t.Fatalf("stages after the file came back: %v", r.Config().StageNames())
	}
}

// A change the stamp does not show (two writes within one tick of a coarse
// file-system clock) is found by Invalidate, and by the content comparison
// while the file is young.
func TestReloaderStampMissesAChange(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	rewrite(t, p, "max_concurrency = 3\n")
	r.stamp = StatStamp(p) // as if the stamp had not moved
	check(t, r, Unchanged)
	r.Invalidate()
	check(t, r, Reloaded)

	rewrite(t, p, "max_concurrency = 4\n")
	st := StatStamp(p)
	r.stamp = st
	r.readAt = time.Unix(0, st.MTime) // read in the same tick as the write
	check(t, r, Reloaded)
	if r.Config().MaxConcurrency != 4 {
		t.Fatalf("max_concurrency = %d, want 4", r.Config().MaxConcurrency)
	}
}

// A file written a moment ago may be half written: looked at again later.
func TestReloaderWaitsForTheWriterToSettle(t *testing.T) {
	r, p := newTestReloader(t, "max_concurrency = 2\n")
	rewrite(t, p, "max_concurrency = ")
	mtime := time.Unix(0, StatStamp(p).MTime)
	r.nowFunc = func() time.Time { return mtime.Add(settleDelay / 2) }
	check(t, r, Unchanged)
	rewrite(t, p, "max_concurrency = 5\n")
	r.nowFunc = func() time.Time { return time.Now().Add(10 * time.Second) }
	check(t, r, Reloaded)
	if r.Config().MaxConcurrency != 5 {
		t.Fatalf("max_concurrency = %d, want 5", r.Config().MaxConcurrency)
	}
}

func TestIntervalFallback(t *testing.T) {
	clearEnv(t)
	if got := IntervalFallback(); got != 30*time.Second {
		t.Errorf("default: %v", got)
	}
	t.Setenv("ORCH_REAPER_INTERVAL_S", "7")
	if got := IntervalFallback(); got != 7*time.Second {
		t.Errorf("ORCH_REAPER_INTERVAL_S=7: %v", got)
	}
	t.Setenv("ORCH_REAPER_INTERVAL_S", "soon")
	if got := IntervalFallback(); got != 30*time.Second {
		t.Errorf("ORCH_REAPER_INTERVAL_S=soon: %v", got)
	}
}
