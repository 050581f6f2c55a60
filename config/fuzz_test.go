package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	orchhooks "github.com/orch-hooks/orch-hooks"
)

// FuzzLoad: any orch.toml either loads into a configuration that passes its
// own validation, or fails with a *config.Error naming the file. Never a
// panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(orchhooks.ExampleConfig))
	f.Add([]byte("[[stages]]\nname = \"a\"\nrun = \"x\"\nnext = \"a\"\n"))
	f.Add([]byte("max_concurrency = \"two\"\n"))
	f.Add([]byte("[reaper]\ndead_ticks = -1\n"))
	f.Add([]byte("a.b.c = 1\n[x]\n[[y]]\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, k := range []string{"ORCH_HOOKS_BUDGET_MS", "ORCH_REAPER_ENABLED", "ORCH_REAPER_INTERVAL_S", "ORCH_REAPER_DEAD_TICKS",
			"ORCH_REAPER_MAX_RUNNING_S", "ORCH_REAPER_FINALIZE_GRACE_S", "ORCH_LEASE_RECLAIM_ENABLED", "ORCH_LEASE_TTL_S"} {
			os.Unsetenv(k)
		}
		path := filepath.Join(dir, "orch.toml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path, true)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.File != path {
				t.Fatalf("error %v (%T) does not name the file", err, err)
			}
			return
		}
		if err := validate(c, source{file: path, data: data}, envSet{}); err != nil {
			t.Fatalf("a loaded configuration fails validation: %v", err)
		}
	})
}
