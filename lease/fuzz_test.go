package lease

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
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
