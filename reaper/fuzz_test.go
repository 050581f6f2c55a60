package reaper_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// FuzzLoadState: any reaper.toml loads or fails with an error; never a panic.
func FuzzLoadState(f *testing.F) {
	f.Add([]byte("version = 1\n[streaks.\"a.b.1.00\"]\ncount = 2\nlast = 2026-01-01T00:00:00Z\n"))
	f.Add([]byte("[last_pass]\nat = 2026-01-01T00:00:00Z\nscanned = 3\n[[last_pass.errors]]\nmessage = \"x\"\n"))
	f.Add([]byte("streaks = 3\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, "reaper.toml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := reaper.LoadState(dir)
		if err == nil && st.Streaks == nil {
			t.Fatal("a loaded state has no streak map")
		}
	})
}

// FuzzStateBytes: any bytes in every text of the reaper's state (job ids as
// map keys, boot ids, a pass's actions and error messages) are saved so that
// the state loads back exactly.
func FuzzStateBytes(f *testing.F) {
	f.Add("caf\xe9", "\xff")
	f.Fuzz(func(t *testing.T, a, b string) {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "locks"), 0o755)
		at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		sight := &reaper.Sighting{Stamp: at, At: at, BootID: "s"}
		want := &reaper.State{Version: 1,
			Streaks: map[string]reaper.Streak{"j1": {Count: 2, Last: at, BootID: "b"}},
			Seen:    map[string]reaper.Seen{"j2": {Started: sight, Progress: sight}},
			LastPass: &reaper.Snapshot{At: at, Actions: []reaper.Action{{Job: "j", Lease: "l", Tier: "t", Outcome: "o"}},
				Errors: []reaper.PassError{{Job: "j", Lease: "l", Path: "p", Message: "m"}}},
		}
		n := 0
		want = statefile.MapStrings(want, func(string) string {
			n++
			if n%2 == 0 {
				return a + "k"
			}
			return b + "v"
		})
		if err := reaper.SaveState(dir, want); err != nil {
			t.Fatal(err)
		}
		got, err := reaper.LoadState(dir)
		if err != nil {
			t.Fatalf("the state saved does not load: %v", err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("round trip changed the state:\n%s", diff)
		}
	})
}
