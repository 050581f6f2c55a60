package crashmatrix_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
)

// TestJobLogMode: a job's log, which holds agent output (tokens, say), is
// created 0600 whatever the umask — readable by the group only when
// core.sharedRepository shares the repository — and a symlink (or
// anything else) planted at a log's path is never followed: the run
// refuses it, the job ends failed saying why, and nothing outside the state
// dir is written or created.
func TestJobLogMode(t *testing.T) {
	t.Parallel()
	old := syscall.Umask(0o022) // a usual umask: 0644 files unless asked otherwise
	syscall.Umask(old)
	repo, env := newWorld(t, strings.Replace(hostileToml, `run = "true"`, `run = "echo secret-token"`, 1))
	run := func(branch string) string {
		t.Helper()
		r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", branch)
		wantCode(t, "enqueue", r, 0, "")
		id := strings.TrimSpace(r.stdout)
		runCLI(t, repo, "run", id)
		return id
	}
	mode := func(id string) fs.FileMode {
		t.Helper()
		fi, err := os.Lstat(env.Store.LogPath(id))
		if err != nil {
			t.Fatalf("job %s's log: %v", id, err)
		}
		return fi.Mode()
	}

	id := run("feat/private")
	if m := mode(id); m.Perm() != 0o600 || !m.IsRegular() {
		t.Errorf("job log mode %v, want -rw------- (it may hold secrets)", m)
	}
	if b, _ := os.ReadFile(env.Store.LogPath(id)); !strings.Contains(string(b), "secret-token") {
		t.Errorf("the log lacks the job's output: %q", b)
	}

	for value, want := range map[string]fs.FileMode{"group": 0o640, "all": 0o644, "0660": 0o640, "umask": 0o600} {
		if out, err := exec.Command("git", "-C", repo.Dir, "config", "core.sharedRepository", value).CombinedOutput(); err != nil {
			t.Fatalf("git config: %v %s", err, out)
		}
		id := run("feat/shared-" + value)
		if m := mode(id); m.Perm() != want {
			t.Errorf("core.sharedRepository=%s: job log mode %v, want %v", value, m.Perm(), want)
		}
	}
	exec.Command("git", "-C", repo.Dir, "config", "--unset", "core.sharedRepository").Run()

	for _, dangling := range []bool{false, true} {
		o := newOutside(t)
		r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/linked")
		if dangling {
			r = runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/linked-dangling")
		}
		id := strings.TrimSpace(r.stdout)
		target := o.path
		if dangling {
			target = filepath.Join(o.dir, "created-through-symlink")
		}
		if err := os.Symlink(target, env.Store.LogPath(id)); err != nil {
			t.Fatal(err)
		}
		runCLI(t, repo, "run", id)
		o.check(t)
		j, err := env.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status != gitstate.Failed || !strings.Contains(j.Reason, "symlink") {
			t.Errorf("a job whose log path is a symlink: %s (%s); want failed, saying so", j.Status, j.Reason)
		}
		if fi, err := os.Lstat(env.Store.LogPath(id)); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			t.Errorf("the symlink at the log path was not left in place: %v, %v", fi, err)
		}
	}
}
