package statewatch_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/statewatch"
)

// waitLimit bounds every wait for a notification: a notification that has
// not come by then never will (the promise of 100 ms is the benchmark's).
const waitLimit = 30 * time.Second

type fixture struct {
	state, cfg string
	w          *statewatch.Watcher
}

func newFixture(t *testing.T, subdirs ...string) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{state: filepath.Join(root, "orch"), cfg: filepath.Join(root, "orch.toml")}
	for _, d := range append([]string{"", "jobs"}, subdirs...) {
		if err := os.MkdirAll(filepath.Join(f.state, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w, err := statewatch.New(f.state, f.cfg, 0)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	f.w = w
	return f
}

func (f *fixture) write(t *testing.T, rel string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.state, rel), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) remove(t *testing.T, rel string) {
	t.Helper()
	if err := os.Remove(filepath.Join(f.state, rel)); err != nil {
		t.Fatal(err)
	}
}

// sync replaces the configuration file (as an editor does: a new file
// renamed over it) and collects every change reported until that
// replacement is: events come in order, so the changes made before it are
// all in the result.
func (f *fixture) sync(t *testing.T) statewatch.Change {
	t.Helper()
	tmp := f.cfg + ".new"
	if err := os.WriteFile(tmp, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.cfg); err != nil {
		t.Fatal(err)
	}
	var got statewatch.Change
	deadline := time.After(waitLimit)
	for got&statewatch.Config == 0 {
		select {
		case <-f.w.Ready():
			got |= f.w.Take()
		case <-deadline:
			t.Fatalf("the configuration file's replacement was not reported within %s", waitLimit)
		}
	}
	return got
}

// waitWork waits until Work is reported.
func (f *fixture) waitWork(t *testing.T, what string) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case <-f.w.Ready():
			if f.w.Take()&statewatch.Work != 0 {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no Work reported within %s", what, waitLimit)
		}
	}
}

// Each change that may give a dispatcher work is reported as Work; changes
// that cannot (a job claimed, a record rewritten, a lease taken) are not.
func TestWorkChanges(t *testing.T) {
	f := newFixture(t, "active", "running", "advance", "leases")
	f.write(t, "leases/main.toml")
	f.write(t, "running/j0")
	f.write(t, "active/j0")
	f.sync(t)
	for _, tc := range []struct {
		what   string
		change func()
		work   bool
	}{
		{"a job claimed (running/ marker created)", func() { f.write(t, "running/j1") }, false},
		{"a record written", func() { f.write(t, "jobs/.tmp-j1"); f.write(t, "jobs/j1.toml") }, false},
		// gitstate creates the marker first: a dispatch told of it may run
		// before the record is there, and skip the job.
		{"a job's active/ marker created", func() { f.write(t, "active/j2") }, false},
		{"the record of that job created (watch not told of jobs/: looked for)", func() { f.write(t, "jobs/.tmp-j2"); link(t, f, "jobs/.tmp-j2", "jobs/j2.toml") }, true},
		{"that record rewritten", func() { f.write(t, "jobs/.tmp-j2b"); rename(t, f, "jobs/.tmp-j2b", "jobs/j2.toml") }, false},
		{"a temp file in active/", func() { f.write(t, "active/.tmp-x") }, false},
		{"a lease taken", func() { f.write(t, "leases/other.toml") }, false},
		{"the lease token counter", func() { f.write(t, "leases/main.seq"); f.remove(t, "leases/main.seq") }, false},
		{"a job ended (running/ marker removed)", func() { f.remove(t, "running/j0") }, true},
		{"a job ended (active/ marker removed)", func() { f.remove(t, "active/j0") }, true},
		{"a done job advanced (advance/ marker created)", func() { f.write(t, "advance/j0") }, true},
		{"a lease released", func() { f.remove(t, "leases/main.toml") }, true},
	} {
		tc.change()
		if tc.work {
			f.waitWork(t, tc.what)
			continue
		}
		if c := f.sync(t); c&statewatch.Work != 0 {
			t.Errorf("%s: Work reported (changes %b), want none", tc.what, c)
		}
	}
	// The event log growing is Events, not Work.
	f.write(t, "events.jsonl")
	if c := f.sync(t); c&statewatch.Events == 0 || c&statewatch.Work != 0 {
		t.Errorf("event log written: changes %b, want Events without Work", c)
	}
}

// A directory that did not exist when the watch began (a state dir of an
// older version, leases/ before the first lease) is watched once created.
func TestSubdirCreatedLater(t *testing.T) {
	f := newFixture(t, "active")
	if err := os.Mkdir(filepath.Join(f.state, "leases"), 0o755); err != nil {
		t.Fatal(err)
	}
	if c := f.sync(t); c&statewatch.Work == 0 {
		t.Fatalf("leases/ created: changes %b, want Work (look at what it holds)", c)
	}
	f.write(t, "leases/main.toml")
	f.sync(t)
	f.remove(t, "leases/main.toml")
	if c := f.sync(t); c&statewatch.Work == 0 {
		t.Fatalf("a lease released in a directory created after the watch began: changes %b, want Work", c)
	}
}

// A burst is coalesced: a consumer told of 100 enqueues is told a few
// times, never once per enqueue. The bound follows from the design, not
// from the machine's speed: one notification per Delay at most while the
// burst lasts, plus the one after it.
func TestBurstCoalesced(t *testing.T) {
	f := newFixture(t, "active")
	start := time.Now()
	for i := range 100 {
		id := "j" + strconv.Itoa(i)
		f.write(t, "active/"+id)
		f.write(t, "jobs/"+id+".toml")
	}
	burst := time.Since(start)
	notes := 0
	var got statewatch.Change
	deadline := time.After(waitLimit)
	tmp := f.cfg + ".new"
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.cfg); err != nil {
		t.Fatal(err)
	}
	for got&statewatch.Config == 0 {
		select {
		case <-f.w.Ready():
			if c := f.w.Take(); c != 0 {
				notes++
				got |= c
			}
		case <-deadline:
			t.Fatal("the burst was not reported")
		}
	}
	elapsed := time.Since(start)
	if max := int(elapsed/statewatch.DelayDefault) + 2; notes > max || notes >= 100 {
		t.Fatalf("100 enqueues in %s made %d notifications in %s; want at most %d", burst, notes, elapsed, max)
	}
	t.Logf("100 enqueues in %s: %d notification(s)", burst, notes)
}

func link(t *testing.T, f *fixture, from, to string) {
	t.Helper()
	if err := os.Link(filepath.Join(f.state, from), filepath.Join(f.state, to)); err != nil {
		t.Fatal(err)
	}
}

func rename(t *testing.T, f *fixture, from, to string) {
	t.Helper()
	if err := os.Rename(filepath.Join(f.state, from), filepath.Join(f.state, to)); err != nil {
		t.Fatal(err)
	}
}
