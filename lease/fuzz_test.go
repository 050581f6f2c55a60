package lease

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// FuzzLeaseRecord: any lease record reads as a lease or as an unreadable
// record (reported, never a panic), and a file name round-trips to its
// target.
func FuzzLeaseRecord(f *testing.F) {
	f.Add([]byte("version = 1\ntarget = \"main\"\ntoken = 3\nttl_ms = 1000\n[owner]\npid = 1\n"), "main")
	f.Add([]byte("token = -1\n"), "release/1.0")
	f.Add([]byte("\xff\xfe"), "a%2Fb")
	f.Fuzz(func(t *testing.T, data []byte, target string) {
		if targetOf(fileName(target)) != target {
			t.Fatalf("file name of %q does not round-trip", target)
		}
		if gitstate.ValidateBranch(target) != nil {
			target = "main"
		}
		dir := t.TempDir()
		m := Open(dir)
		os.MkdirAll(filepath.Join(dir, "leases"), 0o755)
		if err := os.WriteFile(m.recordPath(target), data, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := m.Get(target)
		var ue *gitstate.UnreadableError
		if err != nil && !errors.As(err, &ue) {
			t.Fatalf("error %v is not an unreadable-record error", err)
		}
		if err == nil && l == nil {
			t.Fatal("a record on disk read as no lease")
		}
	})
}

// FuzzLeaseRecordBytes: any bytes in every text field of a lease (the
// holder a user typed, the owner's host and boot id) are written so that
// the lease reads back exactly.
func FuzzLeaseRecordBytes(f *testing.F) {
	f.Add("Jos\xe9", "\xff")
	f.Add("~bytes:", `\x`)
	f.Fuzz(func(t *testing.T, a, b string) {
		dir := t.TempDir()
		m := Open(dir)
		os.MkdirAll(filepath.Join(dir, "leases"), 0o755)
		at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		n := 0
		l := statefile.MapStrings(&Lease{Version: 1, Holder: "h", Owner: procid.Identity{Host: "x", BootID: "y", PID: 3}, Token: 2, AcquiredAt: at, RenewedAt: at, TTLMS: 5}, func(string) string {
			n++
			if n%2 == 0 {
				return a
			}
			return b
		})
		l.Target = "main"
		if err := m.write(l); err != nil {
			t.Fatal(err)
		}
		got, err := m.Get("main")
		if err != nil {
			t.Fatalf("the lease written does not read back: %v", err)
		}
		if *got != *l {
			t.Fatalf("round trip changed the lease: %+v, want %+v", got, l)
		}
	})
}
