package hooks

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	if matches, _ := filepath.Glob(filepath.Join(state, ".tmp-*")); len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}

// The hook script itself skips starting the binary only while the due
// file says no pass is due for this boot, this config and this interval
// override; every other case starts the binary, and none prints anything.
// Run with sh (dash here), the shell git uses for hooks.
func TestScriptSkipsWithoutStartingBinary(t *testing.T) {
	base := t.TempDir()
	gitDir := filepath.Join(base, "repo", ".git")
	for _, d := range []string{"objects", "refs", "hooks", "orch"} {
		if err := os.MkdirAll(filepath.Join(gitDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(gitDir, "HEAD"), []byte("ref: refs/heads/main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hooksDir, state := filepath.Join(gitDir, "hooks"), filepath.Join(gitDir, "orch")
	if !ownHooksDir(hooksDir) {
		t.Fatal("ownHooksDir false for <git-dir>/hooks")
	}
	if ownHooksDir(base) {
		t.Fatal("ownHooksDir true for a directory that is not <git-dir>/hooks")
	}
	cfg := filepath.Join(base, "repo", "orch.toml")
	record := filepath.Join(base, "started")
	exe := filepath.Join(base, "orch-hooks")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho started >> '"+record+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(hooksDir, "post-commit")
	if err := os.WriteFile(hook, Script("post-commit", true), 0o755); err != nil {
		t.Fatal(err)
	}
	dueFile := filepath.Join(state, DueFileName)
	// started runs the hook the way git does and reports whether it
	// started the binary.
	started := func(env ...string) bool {
		t.Helper()
		os.Remove(record)
		cmd := exec.Command(hook)
		cmd.Dir = filepath.Join(base, "repo")
		cmd.Env = append(append(os.Environ(), BinEnv+"="+exe), env...)
		out, err := cmd.CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Fatalf("hook: %v, output %q", err, out)
		}
		_, err = os.Stat(record)
		return err == nil
	}
	fresh := func(interval time.Duration) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte("[reaper]\ninterval_s = 30\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// Older than the due file by more than a second: shells whose
		// test -nt compares whole seconds see it too.
		old := time.Now().Add(-time.Hour)
		os.Chtimes(cfg, old, old)
		recordDue(state, cfg, time.Now(), interval)
	}
	t.Setenv("ORCH_REAPER_INTERVAL_S", "")
	os.Unsetenv("ORCH_REAPER_INTERVAL_S")

	fresh(time.Hour)
	if started() {
		b, _ := os.ReadFile(dueFile)
		t.Fatalf("the binary was started although no pass is due; %s: %q", DueFileName, b)
	}
	// The same, with the binary found on PATH rather than named by
	// ORCH_HOOKS_BIN: the lookup is a builtin and starts nothing either.
	onPath := []string{BinEnv + "=", "PATH=" + base + string(filepath.ListSeparator) + os.Getenv("PATH")}
	if started(onPath...) {
		t.Fatal("the binary, found on PATH, was started although no pass is due")
	}
	os.Remove(dueFile)
	if !started(onPath...) {
		t.Fatal("the binary, found on PATH, was not started when a pass is due")
	}
	for _, tc := range []struct {
		name   string
		change func()
		env    []string
	}{
		{"no due file", func() { os.Remove(dueFile) }, nil},
		{"pass due", func() { fresh(0) }, nil},
		{"config edited since", func() { os.Chtimes(cfg, time.Now().Add(time.Hour), time.Now().Add(time.Hour)) }, nil},
		{"config gone", func() { os.Remove(cfg) }, nil},
		{"interval override", func() {}, []string{"ORCH_REAPER_INTERVAL_S=1"}},
		{"another boot", func() {
			b, _ := os.ReadFile(dueFile)
			f := strings.SplitN(string(b), " ", 6)
			f[4] = "00000000-0000-0000-0000-000000000000"
			os.WriteFile(dueFile, []byte(strings.Join(f, " ")), 0o644)
		}, nil},
		{"torn", func() { os.WriteFile(dueFile, []byte("v2 1 2"), 0o644) }, nil},
		{"garbage", func() { os.WriteFile(dueFile, []byte("\x00\xff v2 x y z\n"), 0o644) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fresh(time.Hour)
			tc.change()
			if !started(tc.env...) {
				t.Errorf("binary not started: %s", tc.name)
			}
		})
	}

	// In a time namespace /proc/uptime is shifted by its offset and says
	// nothing about the due time on the host's clock: the binary decides.
	t.Run("time namespace", func(t *testing.T) {
		if out, err := exec.Command("unshare", "--time", "--boottime", "5", "--fork", "true").CombinedOutput(); err != nil {
			t.Skipf("no time namespace here (unshare --time: %v: %s)", err, out)
		}
		fresh(time.Hour)
		os.Remove(record)
		cmd := exec.Command("unshare", "--time", "--boottime", "5", "--fork", hook)
		cmd.Dir = filepath.Join(base, "repo")
		cmd.Env = append(os.Environ(), BinEnv+"="+exe)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("hook in a time namespace: %v, output %q", err, out)
		}
		if _, err := os.Stat(record); err != nil {
			t.Error("binary not started in a time namespace whose clock is 5 s ahead: the skip trusted a shifted /proc/uptime")
		}
	})
}
