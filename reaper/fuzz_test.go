package reaper_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/orch-hooks/orch-hooks/reaper"
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
