package gitstate

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// fullJob is a job with every field, nested ones included, set.
func fullJob() *Job {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	code := 3
	id := procid.Identity{Host: "h", BootID: "b", PidNS: 7, PID: 8, StartTime: 9}
	return &Job{
		Version: RecordVersion, ID: "t.s.1.00000000", Task: "t", Stage: "s", Branch: "b", Target: "main", Attempt: 1,
		Status: Running, CreatedAt: at, StartedAt: at, FinishedAt: at, ProgressAt: at, StartedBoot: time.Second,
		Monitor: id, Command: id, PGID: 8, Finalizer: id, MergeAuthor: Signature{Name: "n", Email: "e"},
		ExitCode: &code, Gates: []GateResult{{Name: "g", Passed: true, Detail: "d", At: at}, {Name: "g2", Detail: "d2", At: at}},
		Reason: "r", EndedBy: "x", NextJob: "n",
		History: []Transition{{At: at, Actor: "a", PID: 1, Host: "h", To: Queued, Reason: "r1"}, {At: at, Actor: "a", PID: 1, Host: "h", From: Queued, To: Running, Reason: "r2"}},
	}
}

// FuzzJobRecordBytes: any bytes in every text field of a job record (every
// string the record holds, but the id and statuses readers validate) read
// back exactly: the record never becomes unreadable.
func FuzzJobRecordBytes(f *testing.F) {
	f.Add("caf\xe9.txt", "Jos\xe9")
	f.Add("\xff\xfe\x80", statefile.TextEscapePrefix+`\xzz`)
	f.Add("\x00\x1b[2J\x7f", `\\`)
	f.Fuzz(func(t *testing.T, a, b string) {
		n := 0
		j := statefile.MapStrings(fullJob(), func(string) string {
			n++
			if n%2 == 0 {
				return b
			}
			return a + b
		})
		j.ID, j.Status = "t.s.1.00000000", Running
		j.History[0].From, j.History[0].To, j.History[1].From, j.History[1].To = "", Queued, Queued, Running
		for i := range j.History {
			j.History[i].Job = j.ID
		}
		data, err := encodeJob(j)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeJob(data)
		if err != nil {
			t.Fatalf("the record written does not read back: %v\n%s", err, data)
		}
		if diff := cmp.Diff(j, got); diff != "" {
			t.Fatalf("round trip changed the job:\n%s", diff)
		}
	})
}

// TestRecordBytesThroughStore: text that is not UTF-8 goes through the
// store's own writes (create, update, a terminal claim) and its event log,
// and reads back exactly; a reason longer than TextMax is cut so that its
// stored form fits, not left to make the record oversized.
func TestRecordBytesThroughStore(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	j := queued("feat/a", "merge", 1)
	j.Branch = "caf\xe9"
	if _, _, err := s.Create(j); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Claim(ctx, j.ID, []Status{Queued}, Running, "start \xff", func(j *Job) {
		j.MergeAuthor = Signature{Name: "Jos\xe9", Email: "j\xe9@x"}
		j.Gates = []GateResult{{Name: "cmd:x", Detail: strings.Repeat("\x80", 3*TextMax)}}
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(j.ID)
	if err != nil {
		t.Fatalf("the record does not read back: %v", err)
	}
	if got.Branch != "caf\xe9" || got.MergeAuthor.Name != "Jos\xe9" || got.MergeAuthor.Email != "j\xe9@x" || got.History[1].Reason != "start \xff" {
		t.Fatalf("bytes changed: %q %q %q %q", got.Branch, got.MergeAuthor.Name, got.MergeAuthor.Email, got.History[1].Reason)
	}
	if d := got.Gates[0].Detail; statefile.EscapedLen(d) > TextMax || !strings.HasPrefix(d, "\x80\x80") || !strings.Contains(d, "more bytes cut") {
		t.Fatalf("a long binary detail was not cut to fit: stored %d bytes, %q...", statefile.EscapedLen(d), d[:min(len(d), 20)])
	}
	if _, _, err := s.Claim(ctx, j.ID, []Status{Running}, Failed, "gate failed: \xe9", nil); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Events()
	if err != nil {
		t.Fatal(err)
	}
	if last := evs[len(evs)-1]; last.Reason != "gate failed: \xe9" || last.To != Failed {
		t.Fatalf("event log line reads back as %+v", last)
	}
}

// TestEndUndecodable: a regular record that does not decode is ended with a
// new record, its bytes kept exactly beside it and what could be salvaged
// kept; a record that decodes, or that cannot be read at all (a FIFO), is
// never overwritten.
func TestEndUndecodable(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	j := queued("feat/a", "implement", 1)
	if _, _, err := s.Create(j); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Claim(ctx, j.ID, []Status{Queued}, Running, "started", func(j *Job) {
		j.Command = procid.Identity{Host: "h", PID: 42, StartTime: 7}
	}); err != nil {
		t.Fatal(err)
	}
	// A record that decodes is refused.
	if _, _, err := s.EndUndecodable(ctx, j.ID, Failed, "test", "r"); !errors.Is(err, ErrDecodable) {
		t.Fatalf("a decodable record: err = %v, want ErrDecodable", err)
	}
	// Damaged by hand: raw bytes that are not UTF-8.
	path := s.RecordPath(j.ID)
	data, _ := os.ReadFile(path)
	data = append(data, "x_note = \"\xe9\"\n"...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var ue *UnreadableError
	if _, err := s.Get(j.ID); !errors.As(err, &ue) {
		t.Fatalf("the damaged record reads: %v", err)
	}
	// Not a regular file: never overwritten.
	os.Rename(path, path+".real")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, _, err := s.EndUndecodable(ctx, j.ID, Failed, "test", "r"); !errors.Is(err, ErrDecodable) {
		t.Fatalf("a FIFO record: err = %v, want ErrDecodable", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was replaced: %v %v", fi, err)
	}
	os.Remove(path)
	os.Rename(path+".real", path)

	ended, won, err := s.EndUndecodable(ctx, j.ID, Failed, EndedByReaperUndecodable, "reaper: x")
	if err != nil || !won {
		t.Fatalf("EndUndecodable = %v, %v", won, err)
	}
	kept, err := os.ReadFile(s.CorruptPath(j.ID, 1))
	if err != nil || string(kept) != string(data) {
		t.Fatalf("the damaged bytes were not kept exactly: %v", err)
	}
	got, err := s.Get(j.ID)
	if err != nil {
		t.Fatalf("the new record does not read: %v", err)
	}
	if got.Status != Failed || got.Branch != "feat/a" || got.Command.PID != 42 || got.EndedBy != EndedByReaperUndecodable || !strings.Contains(got.Reason, s.CorruptPath(j.ID, 1)) {
		t.Fatalf("new record: %+v", got)
	}
	if h := got.History; len(h) != 3 || h[2].From != Running || h[2].To != Failed {
		t.Fatalf("history: %+v", got.History)
	}
	if ended.Command.PID != 42 {
		t.Fatal("the salvaged process identity is not returned for stopping")
	}
	if _, err := os.Stat(s.activePath(j.ID)); !os.IsNotExist(err) {
		t.Fatal("the active marker is left")
	}
	l, _ := s.All()
	if len(l.Unreadable) != 0 || len(l.Jobs) != 1 {
		t.Fatalf("listing after: %d jobs, %v unreadable", len(l.Jobs), l.Unreadable)
	}
	// Damaged again after ending: repaired keeping its status, not ended
	// twice; the bytes go to the next free name.
	data, _ = os.ReadFile(path)
	os.WriteFile(path, append(data, "x_note = \"\xff\"\n"...), 0o644)
	again, won, err := s.EndUndecodable(ctx, j.ID, Cancelled, EndedByCancel, "cancelled by user")
	if err != nil || won {
		t.Fatalf("second EndUndecodable = %v, %v; want not ended again", won, err)
	}
	if again.Status != Failed || again.EndedBy != EndedByReaperUndecodable || len(again.History) != 3 {
		t.Fatalf("an ended job's outcome changed: %+v", again)
	}
	if _, err := os.Stat(s.CorruptPath(j.ID, 2)); err != nil {
		t.Fatalf("second copy: %v", err)
	}
}
