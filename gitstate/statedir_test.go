package gitstate

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// TestOpenStoreRefusesSymlinkedSubdir: a subdirectory of the state dir that
// is a symlink (or not a directory) would send writes wherever it points:
// the store refuses to open, naming it and the fix.
func TestOpenStoreRefusesSymlinkedSubdir(t *testing.T) {
	for _, sub := range stateSubdirs {
		dir := filepath.Join(t.TempDir(), "orch")
		if err := Init(dir); err != nil {
			t.Fatal(err)
		}
		elsewhere := t.TempDir()
		os.RemoveAll(filepath.Join(dir, sub))
		if err := os.Symlink(elsewhere, filepath.Join(dir, sub)); err != nil {
			t.Fatal(err)
		}
		_, err := OpenStore(dir)
		if !errors.Is(err, statefile.ErrNotRegular) || !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("%s/ a symlink: OpenStore = %v; want refused, naming it and the fix", sub, err)
		}
	}
}

// TestStoreRefusesPlantedFiles: markers, the job lock and the event log
// that are not regular files are refused, never waited on or followed;
// a FIFO record is an unreadable record beside the others.
func TestStoreRefusesPlantedFiles(t *testing.T) {
	s := newStore(t)
	good, _, err := s.Create(queued("good", "build", 1))
	if err != nil {
		t.Fatal(err)
	}
	bad := queued("bad", "build", 1)
	if err := syscall.Mkfifo(filepath.Join(s.Dir(), runningDir, bad.ID), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, _, err := s.Create(bad); err != nil {
		t.Fatal(err)
	}
	// running/<id> is a FIFO: the claim that marks it must fail, not hang.
	if _, _, err := s.Claim(context.Background(), bad.ID, []Status{Queued}, Running, "start", nil); !errors.Is(err, statefile.ErrNotRegular) {
		t.Errorf("claim with a FIFO at the running marker: %v; want ErrNotRegular", err)
	}
	os.Remove(s.RecordPath(bad.ID))
	if err := syscall.Mkfifo(s.RecordPath(bad.ID), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := s.Active()
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Jobs) != 1 || l.Jobs[0].ID != good.ID || len(l.Unreadable) != 1 || !errors.Is(l.Unreadable[0], statefile.ErrNotRegular) {
		t.Errorf("Active with a FIFO record: jobs %v, unreadable %v", l.Jobs, l.Unreadable)
	}
	outside := filepath.Join(t.TempDir(), "events")
	os.Remove(s.EventsPath())
	if err := os.Symlink(outside, s.EventsPath()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Create(queued("more", "build", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(outside); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the event log was written through a symlink: %v", err)
	}
	if r, err := s.Recent(5); err != nil || len(r.Unreadable) != 1 {
		t.Errorf("Recent with a symlinked event log: %+v, %v; want it reported", r, err)
	}
}

func TestSharedLogMode(t *testing.T) {
	for v, want := range map[string]fs.FileMode{
		"": 0o600, "umask": 0o600, "false": 0o600, "0": 0o600, "bogus": 0o600,
		"group": 0o640, "true": 0o640, "1": 0o640, "GROUP": 0o640,
		"all": 0o644, "world": 0o644, "everybody": 0o644, "2": 0o644,
		"0660": 0o640, "0640": 0o640, "0666": 0o644, "0600": 0o600, "0400": 0o600,
	} {
		if got := SharedLogMode(v); got != want {
			t.Errorf("SharedLogMode(%q) = %v, want %v", v, got, want)
		}
	}
}

// TestOwnershipSafeDirectory: a repository owned by another user opens
// only when the protected config's safe.directory lets it, as in git: "*",
// its path, or a "PREFIX/*" it lies under; an empty value clears the
// values before it; the repository's own config does not count.
func TestOwnershipSafeDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the repository to another user")
	}
	base := t.TempDir()
	if r, err := filepath.EvalSymlinks(base); err == nil {
		base = r
	}
	top := filepath.Join(base, "repo")
	if out, err := gitInit(top); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	filepath.WalkDir(top, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			os.Lchown(p, 65534, 65534)
		}
		return nil
	})
	global := filepath.Join(base, "gitconfig")
	t.Setenv("GIT_CONFIG_GLOBAL", global)
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	t.Setenv("SUDO_UID", "")
	os.Unsetenv("SUDO_UID")
	for _, c := range []struct {
		values []string
		ok     bool
	}{
		{nil, false},
		{[]string{"*"}, true},
		{[]string{top}, true},
		{[]string{top + "/"}, true},
		{[]string{base + "/*"}, true},
		{[]string{filepath.Join(base, "other")}, false},
		{[]string{"*", ""}, false},
		{[]string{"", top}, true},
	} {
		var cfg strings.Builder
		cfg.WriteString("[safe]\n")
		for _, v := range c.values {
			cfg.WriteString("\tdirectory = \"" + v + "\"\n")
		}
		if err := os.WriteFile(global, []byte(cfg.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(top)
		if c.ok != (err == nil) || err != nil && !errors.Is(err, ErrDubiousOwnership) {
			t.Errorf("safe.directory %q: Open = %v, want ok=%v", c.values, err, c.ok)
		}
	}
	// The repository's own config is not trusted for this.
	os.WriteFile(global, nil, 0o644)
	f, _ := os.OpenFile(filepath.Join(top, ".git", "config"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("[safe]\n\tdirectory = *\n")
	f.Close()
	if _, err := Open(top); !errors.Is(err, ErrDubiousOwnership) {
		t.Errorf("safe.directory in the repository's own config: Open = %v, want refused", err)
	}
	t.Setenv("SUDO_UID", "65534")
	if _, err := Open(top); err != nil {
		t.Errorf("root through sudo by the owner: %v", err)
	}
}

func gitInit(dir string) ([]byte, error) {
	return exec.Command("git", "init", "-q", dir).CombinedOutput()
}
