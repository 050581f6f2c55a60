package gitstate

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// notSummarised are the fields of Job a running marker's summary leaves
// out: a reaper pass does not need them to leave a job alone.
var notSummarised = []string{"Version", "Task", "Stage", "Branch", "Target", "Attempt", "EndedAt",
	"MergeAuthor", "Merging", "PrevCommit", "Gates", "Reason", "EndedBy", "NextJob", "History",
	// Read from the record when a pass adopts (pipeline.Env.AdoptionDue).
	"Adoptions",
	// Read from the record by whoever ends a shared job (its settle).
	"SharedRun"}

// Every field of Job is either in the summary or named as left out, so a
// field added to Job (one a pass may come to judge by) fails here until
// someone decides which.
func TestSummaryFieldsCoverJob(t *testing.T) {
	typ := reflect.TypeOf(Job{})
	for i := 0; i < typ.NumField(); i++ {
		name := typ.Field(i).Name
		in, out := slices.Contains(SummaryFields, name), slices.Contains(notSummarised, name)
		if in == out {
			t.Errorf("Job.%s: in SummaryFields %v, in notSummarised %v; want exactly one (a field a reaper pass reads must be in the summary)", name, in, out)
		}
	}
}

// summaryView is a job's summarised fields, for comparisons.
func summaryView(t *testing.T, j *Job) map[string]any {
	t.Helper()
	v := reflect.ValueOf(j).Elem()
	m := map[string]any{}
	for _, name := range SummaryFields {
		f := v.FieldByName(name)
		if !f.IsValid() {
			t.Fatalf("SummaryFields names %s, which Job lacks", name)
		}
		x := f.Interface()
		if tm, ok := x.(time.Time); ok {
			x = fmt.Sprintf("%v %d", tm.IsZero(), tm.UnixNano()) // the instant, whatever the location
			if !tm.IsZero() {
				x = fmt.Sprintf("%d.%09d", tm.Unix(), tm.Nanosecond())
			}
		}
		m[name] = x
	}
	return m
}

func TestSummaryRoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("x", 3600))
	for _, j := range []*Job{
		{ID: "a", Status: Running, CreatedAt: at},
		{ID: "b", Status: Running, CreatedAt: at, StartedAt: at.Add(time.Second), StartedBoot: 5 * time.Hour,
			FinishedAt: at.Add(time.Minute), ProgressAt: at.Add(2 * time.Minute), ProgressBoot: 6 * time.Hour, FinalizeStep: 3,
			Monitor:   procid.Identity{Host: "host with spaces \"and quotes\"\n", BootID: "b-1", PidNS: 4026531836, PID: 42, StartTime: 1 << 40},
			Command:   procid.Identity{Host: "h\xff\x00", BootID: "", PID: math.MaxInt32, StartTime: math.MaxUint64, PidNS: math.MaxUint64},
			Finalizer: procid.Identity{Host: "h", BootID: "b", PID: 7, StartTime: 9}, PGID: 43, ExitCode: new(int)},
		{ID: "c", Status: Running, CreatedAt: time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC), StartedAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
			StartedBoot: -time.Second, ExitCode: func() *int { n := -255; return &n }()},
		{ID: "d", Status: Running, CreatedAt: time.Unix(-1, 5)},
	} {
		rs := recordStamp{dev: 1, ino: math.MaxUint64, size: 77, mtime: -3, ctime: math.MaxInt64}
		data := encodeSummary(j, rs)
		got, gotRS, err := decodeSummary(j.ID, data)
		if err != nil {
			t.Fatalf("%s: decode: %v\n%s", j.ID, err, data)
		}
		if gotRS != rs {
			t.Errorf("%s: record stamp %+v, want %+v", j.ID, gotRS, rs)
		}
		if diff := cmp.Diff(summaryView(t, j), summaryView(t, got)); diff != "" {
			t.Errorf("%s: summary does not round-trip (-want +got):\n%s\n%s", j.ID, diff, data)
		}
	}
}

// A summary cut anywhere, or with any byte changed, is not read as one: a
// reader that catches a marker half-written reads the record instead.
func TestSummaryCutOrDamaged(t *testing.T) {
	j := &Job{ID: "a", Status: Running, CreatedAt: time.Unix(1e9, 0), StartedAt: time.Unix(1e9, 1),
		Monitor: procid.Identity{Host: "h", BootID: "b", PID: 4, StartTime: 5}, ExitCode: new(int)}
	data := encodeSummary(j, recordStamp{ino: 9})
	for n := 0; n < len(data); n++ {
		if _, _, err := decodeSummary("a", data[:n]); err == nil {
			t.Fatalf("the first %d of %d bytes decode", n, len(data))
		}
	}
	for i := range data {
		for _, b := range []byte{data[i] ^ 1, '9', ' ', '\n'} {
			if b == data[i] {
				continue
			}
			bad := bytes.Clone(data)
			bad[i] = b
			if _, _, err := decodeSummary("a", bad); err == nil {
				t.Fatalf("byte %d changed to %q still decodes:\n%s", i, b, bad)
			}
		}
	}
	other := bytes.Replace(data, []byte("summary 1\n"), []byte("summary 2\n"), 1)
	if _, _, err := decodeSummary("a", other); err == nil {
		t.Fatal("a summary of another format version decodes")
	}
}

// marker is the path of job id's running marker.
func marker(s *Store, id string) string { return filepath.Join(s.Dir(), runningDir, id) }

// runningJob lists the running jobs and returns id's entry.
func runningJob(t *testing.T, s *Store, id string) RunningJob {
	t.Helper()
	jobs, unreadable, err := s.RunningSummarised()
	if err != nil || len(unreadable) > 0 {
		t.Fatalf("RunningSummarised: %v, unreadable %v", err, unreadable)
	}
	for _, j := range jobs {
		if j.ID == id {
			return j
		}
	}
	t.Fatalf("job %s not listed among %d running", id, len(jobs))
	return RunningJob{}
}

// claimRunning creates a job and claims it running with a monitor.
func claimRunning(t *testing.T, s *Store, task string) *Job {
	t.Helper()
	j, _, err := s.Create(queued(task, "build", 1))
	if err != nil {
		t.Fatal(err)
	}
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	j, won, err := s.Claim(context.Background(), j.ID, []Status{Queued}, Running, "started", func(j *Job) { j.Monitor = self })
	if err != nil || !won {
		t.Fatalf("claim: %v, %v", won, err)
	}
	return j
}

// The claim and every later write of a running job leave a summary of the
// record in its marker, which the listing reads instead of the record; a
// marker that is not a summary of the record as it stands is passed over
// for the record.
func TestRunningSummarised(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	j := claimRunning(t, s, "feat/a")
	check := func(what string, wantSummarised bool) {
		t.Helper()
		got := runningJob(t, s, j.ID)
		if got.Summarised != wantSummarised {
			t.Fatalf("%s: summarised %v, want %v", what, got.Summarised, wantSummarised)
		}
		full, err := s.Get(j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(summaryView(t, full), summaryView(t, got.Job)); diff != "" {
			t.Fatalf("%s: listed job differs from its record (-record +listed):\n%s", what, diff)
		}
	}
	check("after the claim", true)

	before, _ := os.ReadFile(marker(s, j.ID))
	code := 3
	if _, err := s.Update(ctx, j.ID, "", func(j *Job) error {
		j.ExitCode, j.FinishedAt, j.Command, j.PGID = &code, s.now(), procid.Identity{Host: "h", BootID: "b", PID: 99, StartTime: 1}, 99
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check("after an update", true)
	after, _ := os.ReadFile(marker(s, j.ID))

	// A stale summary: what a crash between the record write and the
	// marker write leaves (TestSummaryCrash does it with a real crash).
	os.WriteFile(marker(s, j.ID), before, 0o644)
	check("with the summary of the record before the update", false)
	// The current summary, its marker rewritten (new inode, same bytes):
	// still the summary of the record.
	os.Remove(marker(s, j.ID))
	os.WriteFile(marker(s, j.ID), after, 0o644)
	check("with the summary rewritten", true)
	// The record rewritten with the same bytes by something else than the
	// store: no longer the file the summary names.
	rec, _ := os.ReadFile(s.RecordPath(j.ID))
	tmp := s.RecordPath(j.ID) + ".tmp"
	os.WriteFile(tmp, rec, 0o644)
	os.Rename(tmp, s.RecordPath(j.ID))
	check("with the record replaced behind the store's back", false)
	if err := s.Summarise(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	check("after Summarise", true)

	for _, c := range []struct {
		what string
		data []byte
	}{
		{"an empty marker (a state dir of an older version)", nil},
		{"garbage", []byte("garbage\n")},
		{"a summary of a newer format", bytes.Replace(after, []byte("summary 1"), []byte("summary 2"), 1)},
		{"a cut summary", after[:len(after)/2]},
		{"a summary too large to be one", bytes.Repeat([]byte("x"), summaryMax+10)},
	} {
		os.WriteFile(marker(s, j.ID), c.data, 0o644)
		check(c.what, false)
	}
	// Another job's summary under this job's name names another record.
	k := claimRunning(t, s, "feat/b")
	other, _ := os.ReadFile(marker(s, k.ID))
	os.WriteFile(marker(s, j.ID), other, 0o644)
	check("another job's summary", false)

	// Not a regular file: never followed nor waited on; the record decides.
	os.Remove(marker(s, j.ID))
	os.Symlink(marker(s, k.ID), marker(s, j.ID))
	check("a symlink for a marker", false)
	os.Remove(marker(s, j.ID))
	if err := syscall.Mkfifo(marker(s, j.ID), 0o644); err != nil {
		t.Fatal(err)
	}
	check("a FIFO for a marker", false)
	os.Remove(marker(s, j.ID))

	// The job ends: its marker goes, and one left behind by a crash is
	// passed over and removed.
	os.WriteFile(marker(s, j.ID), after, 0o644)
	if _, won, err := s.Claim(ctx, j.ID, []Status{Running}, Failed, "test", nil); err != nil || !won {
		t.Fatalf("end: %v, %v", won, err)
	}
	if _, err := os.Lstat(marker(s, j.ID)); !os.IsNotExist(err) {
		t.Fatalf("marker of an ended job: %v", err)
	}
	os.WriteFile(marker(s, j.ID), after, 0o644)
	jobs, _, _ := s.RunningSummarised()
	if len(jobs) != 1 || jobs[0].ID != k.ID || !jobs[0].Summarised {
		t.Fatalf("listed %+v, want only %s, summarised", jobs, k.ID)
	}
	if _, err := os.Lstat(marker(s, j.ID)); !os.IsNotExist(err) {
		t.Fatalf("a stale marker of an ended job was not removed: %v", err)
	}
}

// stampHelper stamps a command identity into job $GITSTATE_JOB, as a
// monitor does after starting the command, with ORCH_CRASHPOINT armed.
func stampHelper() int {
	s, err := OpenStore(os.Getenv("GITSTATE_DIR"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	_, err = s.Update(context.Background(), os.Getenv("GITSTATE_JOB"), "", func(j *Job) error {
		j.Command, j.PGID = procid.Identity{Host: "h", BootID: "b", PID: 4242, StartTime: 7}, 4242
		return nil
	})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("stamped")
	return 0
}

// A writer killed between the record write and the marker write leaves the
// summary of the record before: the listing passes over it and reads the
// record, and the next write summarises again. Killed after the marker
// write, the summary is of the record.
func TestSummaryCrash(t *testing.T) {
	for _, c := range []struct {
		point          string
		wantSummarised bool
	}{{"store.updated", false}, {"store.summarised", true}} {
		t.Run(c.point, func(t *testing.T) {
			s := newStore(t)
			j := claimRunning(t, s, "feat/crash")
			before, _ := os.ReadFile(marker(s, j.ID))
			p := testproc.Start(t, append(os.Environ(), "GITSTATE_HELPER=stamp", "GITSTATE_DIR="+s.Dir(), "GITSTATE_JOB="+j.ID,
				crashpoint.EnvVar+"="+c.point))
			p.In.Close()
			err := p.Cmd.Wait()
			if ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("helper: %v; want it killed at %s", err, c.point)
			}
			full, err := s.Get(j.ID)
			if err != nil || full.Command.PID != 4242 {
				t.Fatalf("record after the crash: %+v, %v; want the command stamped", full, err)
			}
			now, _ := os.ReadFile(marker(s, j.ID))
			if stale := bytes.Equal(now, before); stale == c.wantSummarised {
				t.Fatalf("marker unchanged by the crashed write: %v", stale)
			}
			got := runningJob(t, s, j.ID)
			if got.Summarised != c.wantSummarised || got.Command.PID != 4242 {
				t.Fatalf("listed summarised=%v command %v; want summarised=%v and the stamped command", got.Summarised, got.Command, c.wantSummarised)
			}
			if _, err := s.Update(context.Background(), j.ID, "", func(j *Job) error { j.FinalizeStep = 1; return nil }); err != nil {
				t.Fatal(err)
			}
			if got := runningJob(t, s, j.ID); !got.Summarised || got.FinalizeStep != 1 || got.Command.PID != 4242 {
				t.Fatalf("after the next write: %+v", got)
			}
		})
	}
}

// A listing keeps the marker of each job whose summary is current open,
// and the next listing reads the summary through it: a marker rewritten in
// place (every Update) shows the new summary there. One no longer current
// there is read again at its path; one that is no longer a regular file,
// or whose job is no longer listed, is closed.
func TestRunningSummarisedKeepsMarkers(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	j := claimRunning(t, s, "feat/kept")
	kept := func() (int, bool) {
		s.markers.mu.Lock()
		defer s.markers.mu.Unlock()
		fd, ok := s.markers.fds[j.ID]
		return fd, ok
	}
	if got := runningJob(t, s, j.ID); !got.Summarised {
		t.Fatal("first listing: not summarised")
	}
	fd, ok := kept()
	if !ok {
		t.Fatal("the marker of a current summary was not kept open")
	}
	for i := 1; i <= 3; i++ {
		if _, err := s.Update(ctx, j.ID, "", func(j *Job) error { j.FinalizeStep = i; return nil }); err != nil {
			t.Fatal(err)
		}
		got := runningJob(t, s, j.ID)
		if !got.Summarised || got.FinalizeStep != i {
			t.Fatalf("after update %d: summarised %v, step %d", i, got.Summarised, got.FinalizeStep)
		}
		if now, ok := kept(); !ok || now != fd {
			t.Fatalf("after update %d the marker was opened again (fd %d, was %d): the kept file should have served", i, now, fd)
		}
	}
	// Garbage in place: the kept file and the path both fail; the record
	// decides and the file is closed.
	good, _ := os.ReadFile(marker(s, j.ID))
	os.WriteFile(marker(s, j.ID), []byte("garbage\n"), 0o644)
	if got := runningJob(t, s, j.ID); got.Summarised || got.FinalizeStep != 3 {
		t.Fatalf("garbage marker: summarised %v, step %d", got.Summarised, got.FinalizeStep)
	}
	if _, ok := kept(); ok {
		t.Fatal("a marker with no current summary was kept open")
	}
	// The kept file replaced by a new one with the summary: read at the
	// path, kept again.
	os.WriteFile(marker(s, j.ID), good, 0o644)
	runningJob(t, s, j.ID)
	if _, ok := kept(); !ok {
		t.Fatal("not kept again")
	}
	os.Remove(marker(s, j.ID))
	os.WriteFile(marker(s, j.ID), good, 0o644)
	if got := runningJob(t, s, j.ID); !got.Summarised {
		t.Fatal("a marker rewritten as a new file with the current summary: not summarised")
	}
	// A FIFO where the marker was: never read, and the kept file closed.
	os.Remove(marker(s, j.ID))
	if err := syscall.Mkfifo(marker(s, j.ID), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := runningJob(t, s, j.ID); got.Summarised {
		t.Fatal("a FIFO marker: summarised from the file kept open before")
	}
	if _, ok := kept(); ok {
		t.Fatal("the file of a marker replaced by a FIFO is still kept")
	}
	os.Remove(marker(s, j.ID))
	os.WriteFile(marker(s, j.ID), good, 0o644)
	runningJob(t, s, j.ID)
	// The job ends: its marker goes and the file kept for it is closed.
	if _, won, err := s.Claim(ctx, j.ID, []Status{Running}, Failed, "test", nil); err != nil || !won {
		t.Fatalf("end: %v, %v", won, err)
	}
	if jobs, _, err := s.RunningSummarised(); err != nil || len(jobs) != 0 {
		t.Fatalf("listed %v, %v; want none", jobs, err)
	}
	if _, ok := kept(); ok {
		t.Fatal("the marker of an ended job is still kept open")
	}

	// No more than max are kept; the others are read and closed.
	s.markers.max = 1
	a, b := claimRunning(t, s, "feat/a"), claimRunning(t, s, "feat/b")
	for i := 0; i < 2; i++ {
		for _, id := range []string{a.ID, b.ID} {
			if got := runningJob(t, s, id); !got.Summarised {
				t.Fatalf("listing %d: %s not summarised", i, id)
			}
		}
	}
	if n := len(s.markers.fds); n != 1 {
		t.Fatalf("%d markers kept, max 1", n)
	}
	s.CloseMarkers()
	if n := len(s.markers.fds); n != 0 {
		t.Fatalf("%d markers kept after CloseMarkers", n)
	}
}

// running/ replaced by a FIFO (after the store was opened): the listing
// fails at once, naming it, rather than wait for a writer.
func TestRunningSummarisedFIFODir(t *testing.T) {
	s := newStore(t)
	os.RemoveAll(filepath.Join(s.Dir(), runningDir))
	if err := syscall.Mkfifo(filepath.Join(s.Dir(), runningDir), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, _, err := s.RunningSummarised(); err == nil || !strings.Contains(err.Error(), "list running jobs") {
		t.Fatalf("RunningSummarised with running/ a FIFO: %v; want an error", err)
	}
}
