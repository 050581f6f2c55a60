package crashmatrix_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// nobody is the user the ownership tests hand the repository to.
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("running as uid %d: changing a file's owner, or running as another user, needs root", os.Geteuid())
	}
}

// chownAll gives everything under dir to uid.
func chownAll(t *testing.T, dir string, uid int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rootOwned lists what under dir belongs to uid 0.
func rootOwned(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == 0 {
				out = append(out, p)
			}
		}
		return nil
	})
	return out
}

// runAs runs the orch-hooks binary with args in repo as user uid (0: as
// this process), with env.
func runAs(t *testing.T, repo *gittest.Repo, uid int, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(cliBinary(t), args...)
	cmd.Dir = repo.Dir
	cmd.Env = env
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("orch-hooks %v as uid %d: %v", args, uid, err)
	}
	return cliResult{cmd.ProcessState.ExitCode(), out.String(), errb.String()}
}

// openToAll lets another user reach the repository and the binary: the
// test's temporary directories are private to root.
func openToAll(t *testing.T, repo *gittest.Repo) {
	t.Helper()
	for _, d := range []string{filepath.Dir(repo.Dir), filepath.Dir(filepath.Dir(repo.Dir)), filepath.Dir(cliBinary(t))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOwnershipRootInAnotherUsersRepo: root (not through sudo) in a
// repository that belongs to another user is refused as git refuses it:
// exit 2, the error names the owner and the two fixes, and nothing
// root-owned is left behind. safe.directory (in the global config, never
// the repository's own) and SUDO_UID let it in, as they let git in.
func TestOwnershipRootInAnotherUsersRepo(t *testing.T) {
	needRoot(t)
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	runningOrphan(t, env, "orphan")
	chownAll(t, repo.Dir, nobody)
	for _, args := range [][]string{{"reap"}, {"status"}, {"enqueue", "--stage", "build", "--branch", "feat/root"}, {"lease", "acquire", "--target", "main", "--pid", "1"}} {
		r := runCLI(t, repo, args...)
		wantCode(t, "root: orch-hooks "+strings.Join(args, " "), r, 2, "safe.directory")
		for _, want := range []string{"owned by another user", "uid 65534", "sudo -u", "git config --global --add safe.directory " + repo.Dir} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("orch-hooks %s: the error does not say %q: %s", strings.Join(args, " "), want, r.stderr)
			}
		}
	}
	if owned := rootOwned(t, repo.Dir); len(owned) > 0 {
		t.Errorf("root-owned files left in the other user's repository: %v", owned)
	}
	// git's own opt-outs.
	wantCode(t, "root through sudo by the owner", runAs(t, repo, 0, append(repo.Env(), "SUDO_UID=65534"), "status"), 0, "")
	wantCode(t, "root with a repository-local safe.directory (git ignores it)", func() cliResult {
		if out, err := exec.Command("git", "-C", repo.Dir, "-c", "safe.directory=*", "config", "safe.directory", "*").CombinedOutput(); err != nil {
			t.Fatalf("git config: %v %s", err, out)
		}
		return runCLI(t, repo, "status")
	}(), 2, "safe.directory")
	g := exec.Command("git", "config", "--global", "--add", "safe.directory", repo.Dir)
	g.Env = repo.Env()
	if out, err := g.CombinedOutput(); err != nil {
		t.Fatalf("git config --global: %v %s", err, out)
	}
	wantCode(t, "root with the repository in the global safe.directory", runCLI(t, repo, "status"), 0, "")
}

// TestOwnershipStateDirOfAnotherUser: a state dir written by another user
// in root's repository is refused, with the fix, and root adds nothing to
// it.
func TestOwnershipStateDirOfAnotherUser(t *testing.T) {
	needRoot(t)
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	runningOrphan(t, env, "orphan")
	chownAll(t, env.Store.Dir(), nobody)
	r := runCLI(t, repo, "reap")
	wantCode(t, "reap in a state dir of another user", r, 2, env.Store.Dir())
	if !strings.Contains(r.stderr, "uid 65534") || !strings.Contains(r.stderr, "safe.directory") {
		t.Errorf("the error does not name the owner and the fix: %s", r.stderr)
	}
	if owned := rootOwned(t, env.Store.Dir()); len(owned) > 0 {
		t.Errorf("root-owned files left in the state dir of another user: %v", owned)
	}
}

// TestOwnershipLeftoversOfRoot is issue 12's case: root once ran a pass in
// a user's repository and left root-owned lock files; a dead job stays
// running. The user's reap now fails (exit 1) naming the files' owner and
// the fix, instead of "permission denied" and exit 0; the user's hook says
// it once on stderr, exits 0, and is quiet on the next commit within the
// interval.
func TestOwnershipLeftoversOfRoot(t *testing.T) {
	needRoot(t)
	t.Parallel()
	repo, env := newWorld(t, strings.Replace(hostileToml, "target = \"main\"\n", "target = \"main\"\n\n[reaper]\ndead_ticks = 1\n", 1))
	orphan := runningOrphan(t, env, "orphan")
	openToAll(t, repo)
	chownAll(t, repo.Dir, nobody)
	for _, name := range []string{"pass", "reaper-state", "job-" + orphan} {
		p := env.Store.LockPath(name)
		os.Remove(p)
		writeFile(t, p, nil) // root's, 0644: what a root pass leaves
	}
	r := runAs(t, repo, nobody, repo.Env(), "reap")
	if r.code == 0 {
		t.Errorf("reap that could not take the locks root left exited 0:\n%s", r.stderr)
	}
	for _, want := range []string{"permission denied", "uid 0", "sudo chown -R"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("reap's error does not say %q: %s", want, r.stderr)
		}
	}
	if j, err := env.Store.Get(orphan); err != nil || j.Status != gitstate.Running {
		t.Fatalf("the orphan: %+v, %v; want still running (its lock is root's)", j, err)
	}
	t.Logf("reap as the owner, after root:\n%s", r.stderr)
	hook := hookEnv(repo)
	first := runAs(t, repo, nobody, hook, "hook", "post-commit")
	wantCode(t, "hook", first, 0, "")
	if !strings.Contains(first.stderr, "orch-hooks: warning:") || !strings.Contains(first.stderr, "permission denied") || strings.Count(first.stderr, "\n") != 1 {
		t.Errorf("the hook did not say, in one line, that it could not make its pass: %q", first.stderr)
	}
	second := runAs(t, repo, nobody, hook, "hook", "post-commit")
	wantCode(t, "hook again", second, 0, "")
	if second.stderr != "" {
		t.Errorf("the hook said it again within the interval: %q", second.stderr)
	}
}

// TestOwnershipUnwritableStateDir: the owner's own state dir made
// read-only: a command that must write exits 1 naming the problem and the
// fix; status still works. Run as a non-root user (root ignores the
// permission bits).
func TestOwnershipUnwritableStateDir(t *testing.T) {
	needRoot(t)
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	good, _, err := env.Enqueue(pipeline.Request{Task: "good", Branch: "good", Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	openToAll(t, repo)
	chownAll(t, repo.Dir, nobody)
	before := snapshotRecords(t, env)
	filepath.WalkDir(env.Store.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o555)
		}
		return nil
	})
	r := runAs(t, repo, nobody, repo.Env(), "enqueue", "--stage", "build", "--branch", "feat/ro")
	wantCode(t, "enqueue into a read-only state dir", r, 1, "permission denied")
	if !strings.Contains(r.stderr, "chmod -R u+w "+env.Store.Dir()) {
		t.Errorf("the error does not give the fix: %s", r.stderr)
	}
	r = runAs(t, repo, nobody, repo.Env(), "status")
	wantCode(t, "status of a read-only state dir", r, 0, good.ID)
	r = runAs(t, repo, nobody, repo.Env(), "run", good.ID)
	if r.code == 0 {
		t.Errorf("run in a read-only state dir exited 0: %s", r.stderr)
	}
	if after := snapshotRecords(t, env); len(after) != len(before) || after[good.ID+".toml"] != before[good.ID+".toml"] {
		t.Errorf("records changed")
	}
}
