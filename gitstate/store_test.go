package gitstate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// The test binary doubles as a racing claimer (see TestClaimRace).
func TestMain(m *testing.M) {
	if os.Getenv("GITSTATE_HELPER") == "claim" {
		os.Exit(claimHelper())
	}
	if os.Getenv("GITSTATE_HELPER") == "stamp" {
		os.Exit(stampHelper())
	}
	if os.Getenv("GITSTATE_HELPER") == "boottime" {
		d, ok := BootTime()
		fmt.Println(int64(d), ok)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func newStore(t *testing.T) *Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "orch")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func queued(task, stage string, attempt int) *Job {
	return &Job{ID: JobID(task, stage, attempt), Task: task, Stage: stage, Branch: task, Target: "main", Attempt: attempt, Status: Queued}
}

func TestOpenStoreNeedsInit(t *testing.T) {
	_, err := OpenStore(filepath.Join(t.TempDir(), "orch"))
	if !errors.Is(err, ErrNotInitialised) {
		t.Fatalf("OpenStore before Init: %v, want ErrNotInitialised", err)
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	s := newStore(t)
	j, created, err := s.Create(queued("feat/a", "implement", 1))
	if err != nil || !created {
		t.Fatalf("first Create: %v, %v", created, err)
	}
	before, _ := os.ReadFile(s.RecordPath(j.ID))
	again, created, err := s.Create(queued("feat/a", "implement", 1))
	if err != nil || created {
		t.Fatalf("second Create: created=%v, %v; want false, nil", created, err)
	}
	if again.ID != j.ID || !again.CreatedAt.Equal(j.CreatedAt) {
		t.Fatalf("second Create returned %+v, want the first job", again)
	}
	after, _ := os.ReadFile(s.RecordPath(j.ID))
	if string(before) != string(after) {
		t.Fatal("second Create rewrote the record")
	}
	evs, _ := s.Events()
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	got, err := s.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(j, got); diff != "" {
		t.Fatalf("Get differs from Create (-create +get):\n%s", diff)
	}
}

func TestClaimIsCompareAndSwap(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	j, _, _ := s.Create(queued("t", "s", 1))
	got, won, err := s.Claim(ctx, j.ID, []Status{Queued}, Running, "started", func(j *Job) { j.PGID = 7 })
	if err != nil || !won || got.Status != Running || got.PGID != 7 || got.StartedAt.IsZero() {
		t.Fatalf("first claim: %+v, %v, %v", got, won, err)
	}
	got, won, err = s.Claim(ctx, j.ID, []Status{Queued}, Running, "again", nil)
	if err != nil || won || got.Status != Running {
		t.Fatalf("second claim from queued: won=%v status=%s err=%v; want lost", won, got.Status, err)
	}
	got, won, err = s.Claim(ctx, j.ID, []Status{Running}, Failed, "lost", nil)
	if err != nil || !won || got.Reason != "lost" || got.EndedAt.IsZero() {
		t.Fatalf("terminal claim: %+v, %v, %v", got, won, err)
	}
	// A terminal status never changes, by claim or by update.
	if _, won, _ := s.Claim(ctx, j.ID, []Status{Running, Failed}, Done, "x", nil); won {
		t.Fatal("claimed a failed job as done")
	}
	if _, err := s.Update(ctx, j.ID, "", func(j *Job) error { j.Reason = "changed"; return nil }); err == nil {
		t.Fatal("Update rewrote an ended job's record")
	}
	final, _ := s.Get(j.ID)
	if final.Status != Failed || final.Reason != "lost" {
		t.Fatalf("after refused writes: %s %q", final.Status, final.Reason)
	}
	var path []string
	for _, h := range final.History {
		path = append(path, fmt.Sprintf("%s>%s", h.From, h.To))
	}
	if diff := cmp.Diff([]string{">queued", "queued>running", "running>failed"}, path); diff != "" {
		t.Fatalf("history (-want +got):\n%s", diff)
	}
}

func TestUpdateRefusesNonEdges(t *testing.T) {
	s := newStore(t)
	j, _, _ := s.Create(queued("t", "s", 1))
	_, err := s.Update(context.Background(), j.ID, "", func(j *Job) error { j.Status = Done; return nil })
	if err == nil {
		t.Fatal("queued → done was allowed")
	}
	if got, _ := s.Get(j.ID); got.Status != Queued {
		t.Fatalf("status %s after refused update", got.Status)
	}
}

func TestActiveSkipsEndedRecords(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	a, _, _ := s.Create(queued("a", "s", 1))
	b, _, _ := s.Create(queued("b", "s", 1))
	s.Claim(ctx, b.ID, []Status{Queued}, Cancelled, "x", nil)
	// Corrupt the ended record: Active must not even read it.
	os.WriteFile(s.RecordPath(b.ID), []byte("garbage ["), 0o644)
	l, err := s.Active()
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Jobs) != 1 || l.Jobs[0].ID != a.ID || len(l.Unreadable) != 0 {
		t.Fatalf("Active = %d jobs %v, unreadable %v; want only %s", len(l.Jobs), l.Jobs, l.Unreadable, a.ID)
	}
	all, _ := s.All()
	if len(all.Jobs) != 1 || len(all.Unreadable) != 1 || all.Unreadable[0].Path != s.RecordPath(b.ID) {
		t.Fatalf("All = %v, unreadable %v", all.Jobs, all.Unreadable)
	}
}

func TestUnreadableRecordsAreReportedAndKept(t *testing.T) {
	s := newStore(t)
	good, _, _ := s.Create(queued("good", "s", 1))
	bad, _, _ := s.Create(queued("bad", "s", 1))
	garbage := []byte("\x00\x01 not toml")
	os.WriteFile(s.RecordPath(bad.ID), garbage, 0o644)
	// A directory where a record should be, and an entry that is no job id.
	os.Mkdir(filepath.Join(s.Dir(), "active", "dir.s.1.deadbeef"), 0o755)
	os.Mkdir(s.RecordPath("dir.s.1.deadbeef"), 0o755)
	os.WriteFile(filepath.Join(s.Dir(), "active", ".stray"), nil, 0o644)

	l, err := s.Active()
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Jobs) != 1 || l.Jobs[0].ID != good.ID {
		t.Fatalf("Active jobs = %v, want only %s", l.Jobs, good.ID)
	}
	paths := map[string]bool{}
	for _, u := range l.Unreadable {
		paths[u.Path] = true
	}
	if !paths[s.RecordPath(bad.ID)] || !paths[s.RecordPath("dir.s.1.deadbeef")] || len(paths) != 2 {
		t.Fatalf("unreadable = %v", l.Unreadable)
	}
	if b, _ := os.ReadFile(s.RecordPath(bad.ID)); string(b) != string(garbage) {
		t.Fatal("the unreadable record was changed")
	}
	var ue *UnreadableError
	if _, err := s.Get(bad.ID); !errors.As(err, &ue) {
		t.Fatalf("Get(bad) = %v, want *UnreadableError", err)
	}
}

func TestMarkerWithoutRecordIsSkipped(t *testing.T) {
	s := newStore(t)
	j := queued("t", "s", 1)
	// A create cut short after the marker, before the record.
	os.WriteFile(filepath.Join(s.Dir(), "active", j.ID), nil, 0o644)
	l, _ := s.Active()
	if len(l.Jobs) != 0 || len(l.Unreadable) != 0 {
		t.Fatalf("Active = %v %v, want nothing", l.Jobs, l.Unreadable)
	}
	if _, created, err := s.Create(j); !created || err != nil {
		t.Fatalf("Create after a cut-short create: %v %v", created, err)
	}
	if l, _ := s.Active(); len(l.Jobs) != 1 {
		t.Fatalf("Active after completing: %v", l.Jobs)
	}
}

func TestRecentFromEventLog(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tick := 0
	s.Now = func() time.Time { tick++; return base.Add(time.Duration(tick) * time.Second) }
	var ended []string
	for i := 0; i < 5; i++ {
		j, _, _ := s.Create(queued(fmt.Sprintf("t%d", i), "s", 1))
		s.Claim(ctx, j.ID, []Status{Queued}, Cancelled, "x", nil)
		ended = append(ended, j.ID)
	}
	s.Create(queued("active", "s", 1))
	got, err := s.Recent(3)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range got.Jobs {
		ids = append(ids, j.ID)
	}
	if diff := cmp.Diff([]string{ended[4], ended[3], ended[2]}, ids); diff != "" {
		t.Fatalf("Recent(3) (-want +got):\n%s", diff)
	}
}

func TestEventLogLine(t *testing.T) {
	s := newStore(t)
	s.Actor = "tester"
	j, _, _ := s.Create(queued("t", "s", 1))
	s.Claim(context.Background(), j.ID, []Status{Queued}, Running, "go", nil)
	data, _ := os.ReadFile(s.EventsPath())
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d event lines, want 2", len(lines))
	}
	for _, key := range []string{`"time":`, `"job":"` + j.ID + `"`, `"actor":"tester"`, `"pid":`, `"host":`, `"from":"queued"`, `"to":"running"`, `"reason":"go"`} {
		if !strings.Contains(lines[1], key) {
			t.Errorf("event line %s lacks %s", lines[1], key)
		}
	}
}

// claimHelper is one racing process. For each job id it reads from stdin it
// tries the claim and prints "won" or "lost"; the parent writes each id to
// every racer at once, so each round is a fresh race between processes.
func claimHelper() int {
	s, err := OpenStore(os.Getenv("GITSTATE_DIR"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	s.Actor = "racer"
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		_, won, err := s.Claim(context.Background(), in.Text(), []Status{Queued}, Running, "race", nil)
		switch {
		case err != nil:
			fmt.Println("error", err)
			return 1
		case won:
			fmt.Println("won")
		default:
			fmt.Println("lost")
		}
	}
	return 0
}

// Sixteen processes race to claim the same queued job: exactly one wins, and
// the event log shows exactly one queued → running for it. Repeated.
func TestClaimRace(t *testing.T) {
	const racers = 16
	rounds := 50
	if testing.Short() {
		rounds = 5
	}
	s := newStore(t)
	type racer struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
	}
	var rs []racer
	for i := 0; i < racers; i++ {
		p := testproc.Start(t, append(os.Environ(), "GITSTATE_HELPER=claim", "GITSTATE_DIR="+s.Dir()))
		rs = append(rs, racer{p.Cmd, p.In, p.Out})
	}
	for round := 0; round < rounds; round++ {
		j, _, err := s.Create(queued("race", "s", round+1))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			io.WriteString(r.in, j.ID+"\n")
		}
		wins := 0
		for i, r := range rs {
			line, err := r.out.ReadString('\n')
			if err != nil {
				t.Fatalf("round %d racer %d: %v", round, i, err)
			}
			switch strings.TrimSpace(line) {
			case "won":
				wins++
			case "lost":
			default:
				t.Fatalf("round %d racer %d said %q", round, i, line)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners, want exactly 1", round, wins)
		}
		got, _ := s.Get(j.ID)
		if got.Status != Running || len(got.History) != 2 {
			t.Fatalf("round %d: status %s, history %v", round, got.Status, got.History)
		}
	}
	for _, r := range rs {
		r.in.Close()
		if err := r.cmd.Wait(); err != nil {
			t.Fatalf("racer: %v", err)
		}
	}
	evs, _ := s.Events()
	claims := map[string]int{}
	for _, e := range evs {
		if e.To == Running {
			claims[e.Job]++
		}
	}
	if len(claims) != rounds {
		t.Fatalf("%d jobs claimed in the event log, want %d", len(claims), rounds)
	}
	for id, n := range claims {
		if n != 1 {
			t.Errorf("job %s: %d queued → running events, want 1", id, n)
		}
	}
}

// In-process goroutines race the same way (run under -race).
func TestClaimRaceGoroutines(t *testing.T) {
	s := newStore(t)
	j, _, _ := s.Create(queued("g", "s", 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, won, err := s.Claim(context.Background(), j.ID, []Status{Queued}, Running, "g", nil)
			if err != nil {
				t.Error(err)
			}
			if won {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d winners, want 1", wins)
	}
}

// Recent reads the event log backwards in growing chunks; lines cut at a
// chunk boundary must still be found, in order.
func TestRecentAcrossChunks(t *testing.T) {
	s := newStore(t)
	var ids []string
	for i := 0; i < 400; i++ {
		j := queued(fmt.Sprintf("task-with-a-longish-name-%03d", i), "s", 1)
		j.Status = Cancelled
		j.Version = RecordVersion
		j.CreatedAt = time.Now().UTC()
		data, _ := encodeJob(j)
		os.WriteFile(s.RecordPath(j.ID), data, 0o644)
		// Padding in the reason makes lines of varying length.
		if err := s.appendEvent(Transition{Job: j.ID, From: Queued, To: Cancelled, Reason: strings.Repeat("x", i%97)}); err != nil {
			t.Fatal(err)
		}
		s.appendEvent(Transition{Job: j.ID, To: Queued})
		ids = append(ids, j.ID)
	}
	got, err := s.Recent(350)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Jobs) != 350 {
		t.Fatalf("Recent(350) found %d jobs", len(got.Jobs))
	}
	for i, j := range got.Jobs {
		if want := ids[len(ids)-1-i]; j.ID != want {
			t.Fatalf("Recent[%d] = %s, want %s", i, j.ID, want)
		}
	}
}

// TestOversizedRecord: a record over statefile.MaxSizeDefault is an
// unreadable record like a truncated one (reported in every listing, the
// other jobs listed), and is neither read nor changed.
func TestOversizedRecord(t *testing.T) {
	s := newStore(t)
	good, _, _ := s.Create(queued("good", "s", 1))
	big, _, _ := s.Create(queued("big", "s", 1))
	valid, err := os.ReadFile(s.RecordPath(big.ID))
	if err != nil {
		t.Fatal(err)
	}
	// Valid TOML, so only the size can make it unreadable.
	huge := append([]byte(strings.Repeat("# padding\n", statefile.MaxSizeDefault/10+1)), valid...)
	if err := os.WriteFile(s.RecordPath(big.ID), huge, 0o644); err != nil {
		t.Fatal(err)
	}
	var ue *UnreadableError
	_, err = s.Get(big.ID)
	if !errors.As(err, &ue) || !errors.Is(err, statefile.ErrTooLarge) || ue.Path != s.RecordPath(big.ID) {
		t.Fatalf("Get of an oversized record = %v, want an *UnreadableError wrapping statefile.ErrTooLarge", err)
	}
	for name, list := range map[string]func() (Listing, error){"Active": s.Active, "All": s.All} {
		l, err := list()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(l.Jobs) != 1 || l.Jobs[0].ID != good.ID || len(l.Unreadable) != 1 || !errors.Is(l.Unreadable[0], statefile.ErrTooLarge) {
			t.Errorf("%s: jobs %v, unreadable %v; want %s and the oversized record", name, l.Jobs, l.Unreadable, good.ID)
		}
	}
	if _, err := s.Update(context.Background(), big.ID, "x", func(*Job) error { return nil }); !errors.Is(err, statefile.ErrTooLarge) {
		t.Errorf("Update of an oversized record: %v, want ErrTooLarge", err)
	}
	if b, _ := os.ReadFile(s.RecordPath(big.ID)); len(b) != len(huge) {
		t.Error("the oversized record was changed")
	}
}

// TestLongTextIsClamped: free text longer than TextMax (a gate listing
// thousands of conflicting paths) is cut when written, so the record stays
// readable and small.
func TestLongTextIsClamped(t *testing.T) {
	s := newStore(t)
	j, _, _ := s.Create(queued("long", "s", 1))
	long := strings.Repeat("ü/conflicting/path.go, ", 200_000) // 4.8 MB
	if _, won, err := s.Claim(context.Background(), j.ID, []Status{Queued}, Running, "started", nil); err != nil || !won {
		t.Fatal(won, err)
	}
	got, won, err := s.Claim(context.Background(), j.ID, []Status{Running}, Failed, "gate mergeable failed: "+long, func(j *Job) {
		j.Gates = []GateResult{{Name: "mergeable", Detail: long}}
	})
	if err != nil || !won {
		t.Fatalf("claim with %d bytes of reason: %v %v", len(long), won, err)
	}
	read, err := s.Get(j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, read); diff != "" {
		t.Errorf("the returned job differs from the record:\n%s", diff)
	}
	for what, text := range map[string]string{"reason": read.Reason, "gate detail": read.Gates[0].Detail, "history reason": read.History[len(read.History)-1].Reason} {
		if len(text) > TextMax || !utf8.ValidString(text) || !strings.HasPrefix(text, long[:100]) && !strings.HasPrefix(text, "gate mergeable failed: ") || !strings.Contains(text, "bytes cut)") {
			t.Errorf("%s: %d bytes, valid UTF-8 %v, ends %q", what, len(text), utf8.ValidString(text), text[max(0, len(text)-60):])
		}
	}
	if fi, _ := os.Stat(s.RecordPath(j.ID)); fi.Size() > 64<<10 {
		t.Errorf("record is %d bytes", fi.Size())
	}
}

// TestEventAfterCutLine: a line left cut short in the event log (a full disk
// in the middle of an append whose writer could not take it back) does not
// swallow the next event: that starts on a line of its own.
func TestEventAfterCutLine(t *testing.T) {
	s := newStore(t)
	a, _, _ := s.Create(queued("a", "s", 1))
	f, err := os.OpenFile(s.EventsPath(), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2026-11-29T10:00:00Z","job":"cut`)
	f.Close()
	b, _, _ := s.Create(queued("b", "s", 1))
	evs, err := s.Events()
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Job != a.ID || evs[1].Job != b.ID {
		t.Fatalf("events %+v; want the enqueues of %s and %s", evs, a.ID, b.ID)
	}
}

// TestCutTail: the part of a line written before a write failed is taken
// back off only while it is still the end of the file.
func TestCutTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	os.WriteFile(path, []byte("whole\npart"), 0o644)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cutTail(f, []byte("other"))
	if b, _ := os.ReadFile(path); string(b) != "whole\npart" {
		t.Fatalf("cut a tail that was not ours: %q", b)
	}
	cutTail(f, []byte("part"))
	if b, _ := os.ReadFile(path); string(b) != "whole\n" {
		t.Fatalf("after cutting our tail: %q", b)
	}
}
