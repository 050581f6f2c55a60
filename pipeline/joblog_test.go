package pipeline

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
)

// punchable opens a file in a temporary directory and skips the test when
// its file system cannot punch holes.
func punchable(t *testing.T) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "log"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.Write(make([]byte, 8192))
	if err := punchHole(f, 0, 4096); err != nil {
		t.Skipf("the file system of %s cannot punch holes: %v", f.Name(), err)
	}
	f.Truncate(0)
	return f
}

// TestLogCapKeepsHeadAndTail: whatever the sizes of the appends, once
// Enforce has run the log takes at most the cap (plus a block) of disk,
// and LogReader gives the output's first cap/2 bytes (rounded down to the
// block), a line naming exactly the bytes cut, and its last bytes
// (at least cap/2); output under the cap reads back whole.
func TestLogCapKeepsHeadAndTail(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, c := range []struct{ max, total int }{{65536, 100}, {65536, 65536}, {65536, 65537}, {65536, 3 * 65536}, {70000, 1 << 20}} {
		f := punchable(t)
		lc := startLogCap(f, c.max, func(string, ...any) {})
		out := make([]byte, c.total)
		for i := range out {
			out[i] = byte('a' + rng.Intn(26))
		}
		for p := out; len(p) > 0; {
			n := min(len(p), 1+rng.Intn(c.max/3))
			if _, err := f.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		lc.Enforce()
		lc.Stop()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != int64(c.total) {
			t.Fatalf("apparent size %d, want %d", st.Size, c.total)
		}
		if used := st.Blocks * 512; used > int64(c.max)+2*int64(st.Blksize) {
			t.Errorf("max %d, total %d: the log takes %d bytes of disk", c.max, c.total, used)
		}
		got, err := io.ReadAll(NewLogReader(f, 0, int64(c.max)))
		if err != nil {
			t.Fatal(err)
		}
		if c.total <= c.max {
			if !bytes.Equal(got, out) {
				t.Fatalf("max %d, total %d: output under the cap changed", c.max, c.total)
			}
			continue
		}
		m := regexp.MustCompile(`\n… (\d+) bytes cut \(log capped at (\d+) bytes\) …\n`).FindSubmatchIndex(got)
		if m == nil {
			// Just over the cap: less than a block to punch.
			if !bytes.Equal(got, out) || c.total > c.max+int(st.Blksize) {
				t.Fatalf("max %d, total %d: no cut line in %d bytes read", c.max, c.total, len(got))
			}
			continue
		}
		var cut int
		fmt.Sscan(string(got[m[2]:m[3]]), &cut)
		head, tail := got[:m[0]], got[m[1]:]
		blk := int(st.Blksize)
		if len(head) != c.max/2/blk*blk || !bytes.Equal(head, out[:len(head)]) {
			t.Errorf("max %d, total %d: head of %d bytes, not the output's first %d", c.max, c.total, len(head), c.max/2/blk*blk)
		}
		if len(tail) < c.max/2 || !bytes.Equal(tail, out[c.total-len(tail):]) {
			t.Errorf("max %d, total %d: tail of %d bytes is not the output's last (at least %d)", c.max, c.total, len(tail), c.max/2)
		}
		if len(head)+cut+len(tail) != c.total {
			t.Errorf("max %d, total %d: head %d + cut %d + tail %d", c.max, c.total, len(head), cut, len(tail))
		}
	}
}

// TestLogCapShed: a record that found no space sheds all of the log but
// its first 64 KiB; the reader names what went.
func TestLogCapShed(t *testing.T) {
	f := punchable(t)
	lc := startLogCap(f, 1<<30, func(string, ...any) {})
	defer lc.Stop()
	f.Write(bytes.Repeat([]byte("z"), 1<<20))
	if freed := lc.Shed(); freed < 1<<20-logKeepOnFull-8192 {
		t.Errorf("Shed freed %d bytes of a 1 MiB log", freed)
	}
	f.Write([]byte("AFTER\n"))
	got, _ := io.ReadAll(NewLogReader(f, 0, 0))
	want := fmt.Sprintf("\n… %d bytes cut (log capped) …\nAFTER\n", 1<<20-logKeepOnFull)
	if !bytes.HasSuffix(got, []byte(want)) || len(got) != logKeepOnFull+len(want) {
		t.Errorf("after Shed the log reads %d bytes ending %q; want the first 64 KiB and %q", len(got), got[max(0, len(got)-80):], want)
	}
}

// TestLogReaderFollows: a reader at the end of the log (logs -f) gets what
// is appended later, and a hole punched past where it had read as one cut
// line, never as zeros.
func TestLogReaderFollows(t *testing.T) {
	f := punchable(t)
	lc := startLogCap(f, 65536, func(string, ...any) {})
	defer lc.Stop()
	f.Write([]byte("first\n"))
	r := NewLogReader(f, 0, 65536)
	if got, _ := io.ReadAll(r); string(got) != "first\n" {
		t.Fatalf("read %q", got)
	}
	f.Write(bytes.Repeat([]byte("m"), 1<<20))
	lc.Enforce()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.IndexByte(got, 0) >= 0 || !bytes.Contains(got, []byte("bytes cut (log capped at 65536 bytes)")) || !bytes.HasSuffix(got, []byte("mmmm")) {
		t.Errorf("a follower read %d bytes: %.120q … %q", len(got), got, got[max(0, len(got)-40):])
	}
	if r.Pos != 6+1<<20 {
		t.Errorf("the follower is at %d, want the end, %d", r.Pos, 6+1<<20)
	}
}
