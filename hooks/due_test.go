package hooks

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The due file lets a hook skip only while nothing it depends on changed:
// the clock inside [last pass, due), the same config file untouched, the
// same interval override. Anything else, including a damaged file, means
// "decide the slow way".
func TestNotDue(t *testing.T) {
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "orch.toml")
	if err := os.WriteFile(cfg, []byte("[reaper]\ninterval_s = 30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	last := time.Now().Add(-time.Second)
	reset := func() { recordDue(state, cfg, last, 30*time.Second) }
	reset()
	if !NotDue(state, cfg, time.Now()) {
		t.Fatal("NotDue false right after a pass")
	}
	for _, tc := range []struct {
		name   string
		change func()
		now    time.Time
	}{
		{"interval over", func() {}, last.Add(30 * time.Second)},
		{"clock moved back before the pass", func() {}, last.Add(-time.Millisecond)},
		{"config edited", func() {
			os.Chtimes(cfg, time.Now(), time.Now().Add(time.Second))
		}, time.Now()},
		{"interval override set", func() { t.Setenv("ORCH_REAPER_INTERVAL_S", "1") }, time.Now()},
		{"due file torn", func() { os.WriteFile(filepath.Join(state, DueFileName), []byte("v1 12"), 0o644) }, time.Now()},
		{"due file gone", func() { os.Remove(filepath.Join(state, DueFileName)) }, time.Now()},
		{"config gone", func() { os.Rename(cfg, cfg+".away") }, time.Now()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reset()
			tc.change()
			if NotDue(state, cfg, tc.now) {
				t.Errorf("NotDue true after: %s", tc.name)
			}
			os.Rename(cfg+".away", cfg)
		})
	}
	if matches, _ := filepath.Glob(filepath.Join(state, "*.tmp-*")); len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}
