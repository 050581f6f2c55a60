package crashmatrix_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// hangBound bounds each command of the file-type tests: a bound on a hang
// (the command is killed when it passes), not a timing assertion.
const hangBound = 2 * time.Second

// calibratedBound is hangBound, or twenty times what a `status --json` of
// a healthy repository takes on this machine now when that is longer: a
// loaded machine (CI running other packages' tests at once) must not make
// a slow start look like a hang, and a real hang outlasts any bound.
func calibratedBound(t *testing.T) time.Duration {
	t.Helper()
	cliBinary(t) // built (once) before anything is timed
	repo, _ := newWorld(t, hostileToml)
	var slowest time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		if r, timedOut := runBounded(t, repo, repo.Env(), time.Minute, "status", "--json"); timedOut || r.code != 0 {
			t.Fatalf("status of a healthy repository: exit %d, timed out %v: %s", r.code, timedOut, r.stderr)
		}
		slowest = max(slowest, time.Since(start))
	}
	bound := max(hangBound, 20*slowest)
	t.Logf("a healthy status takes up to %v here: each command is bounded at %v", slowest, bound)
	return bound
}

// runBounded runs the orch-hooks binary with args in repo, killed when it
// runs past bound; timedOut says it had to be.
func runBounded(t *testing.T, repo *gittest.Repo, env []string, bound time.Duration, args ...string) (r cliResult, timedOut bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBinary(t), args...)
	cmd.Dir = repo.Dir
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// The binary may leave a detached child holding the pipes (a
	// background reap): do not wait for them past the kill.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("orch-hooks %v: %v", args, err)
	}
	return cliResult{cmd.ProcessState.ExitCode(), out.String(), errb.String()}, ctx.Err() != nil
}

// hookEnv is the repository's environment with hooks enabled: the hook
// command exits at once under ORCH_HOOKS=0.
func hookEnv(repo *gittest.Repo) []string {
	var env []string
	for _, kv := range repo.Env() {
		if !strings.HasPrefix(kv, "ORCH_HOOKS=") {
			env = append(env, kv)
		}
	}
	return env
}

// plantSocket puts a unix socket at path. It is bound in a short temporary
// directory (a socket's path is limited to about 100 bytes) and renamed
// into place.
func plantSocket(t *testing.T, path string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	tmp := filepath.Join(dir, "s")
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: tmp}); err != nil {
		t.Skipf("bind a unix socket: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Skipf("move a unix socket into the state dir: %v", err)
	}
}

// outsideFile is a file outside the state dir that a symlink in it points
// to; the test checks that nothing wrote it, moved its mtime or created
// anything beside it.
type outsideFile struct {
	dir, path string
	content   string
	mtime     time.Time
}

func newOutside(t *testing.T) *outsideFile {
	t.Helper()
	o := &outsideFile{dir: t.TempDir(), content: "outside the state dir: never written\n",
		mtime: time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)}
	o.path = filepath.Join(o.dir, "target")
	writeFile(t, o.path, []byte(o.content))
	if err := os.Chtimes(o.path, o.mtime, o.mtime); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *outsideFile) check(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(o.path)
	if err != nil || string(b) != o.content {
		t.Errorf("the file outside the state dir a symlink points to changed: %q, %v", b, err)
	}
	if fi, err := os.Stat(o.path); err != nil || !fi.ModTime().Equal(o.mtime) {
		t.Errorf("the file outside the state dir was touched: %v, %v", fi.ModTime(), err)
	}
	ents, _ := os.ReadDir(o.dir)
	for _, e := range ents {
		if e.Name() != "target" {
			t.Errorf("%s was created outside the state dir, through a symlink", filepath.Join(o.dir, e.Name()))
		}
	}
}

// TestHostileFileTypes: every state path a command opens is replaced in
// turn by a FIFO, a symlink to a file outside the state dir, a dangling
// symlink, a directory and a unix socket. status, the post-commit hook and
// the other commands that read or write it end (each within hangBound:
// open(2) on a FIFO with no writer blocked forever before), nothing outside
// the state dir is written or created, and the other jobs are still listed.
// A record in place of which something else is found is reported like a
// corrupt one, with what it is and the fix.
func TestHostileFileTypes(t *testing.T) {
	t.Parallel()
	reapToml := strings.Replace(hostileToml, "target = \"main\"\n", "target = \"main\"\n\n[reaper]\ndead_ticks = 1\ninterval_s = 0\n", 1)
	// Each path is relative to the state dir; VICTIM stands for the id of
	// a running job whose monitor is dead.
	paths := []struct {
		name, rel string
		// reported: status --json lists the path as unreadable.
		reported bool
	}{
		{"job record", "jobs/VICTIM.toml", true},
		{"running marker", "running/VICTIM", false},
		{"active marker", "active/VICTIM", false},
		{"job lock", "locks/job-VICTIM.lock", false},
		{"event log", "events.jsonl", true},
		{"job log", "logs/VICTIM.log", false},
		{"reaper state", "reaper.toml", false},
		{"reaper state lock", "locks/reaper.lock", false},
		{"pass lock", "locks/pass.lock", false},
		{"lease record", "leases/main.toml", true},
		{"lease lock", "locks/lease-main.lock", false},
		{"lease token counter", "leases/main.seq", false},
		{"dispatcher record", "watch.toml", false},
		{"dispatch lock", "locks/dispatch.lock", false},
		{"hook due file", "hook-due", false},
		{"pending merge sync", "merges/main.toml", false},
	}
	kinds := []struct {
		name  string
		plant func(t *testing.T, path string, o *outsideFile)
		what  string // how the error names it
	}{
		{"fifo", func(t *testing.T, p string, _ *outsideFile) {
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
		}, "FIFO"},
		{"symlink", func(t *testing.T, p string, o *outsideFile) {
			if err := os.Symlink(o.path, p); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"dangling-symlink", func(t *testing.T, p string, o *outsideFile) {
			if err := os.Symlink(filepath.Join(o.dir, "created-through-symlink"), p); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"directory", func(t *testing.T, p string, _ *outsideFile) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "directory"},
		{"socket", func(t *testing.T, p string, _ *outsideFile) { plantSocket(t, p) }, "socket"},
	}
	// At most a few cases at once: hangBound bounds a hang, and eighty
	// worlds at once on a small machine would make a slow start look like
	// one.
	slots := make(chan struct{}, max(2, runtime.NumCPU()))
	bound := calibratedBound(t)
	for _, p := range paths {
		for _, k := range kinds {
			t.Run(strings.ReplaceAll(p.name, " ", "-")+"/"+k.name, func(t *testing.T) {
				t.Parallel()
				slots <- struct{}{}
				defer func() { <-slots }()
				repo, env := newWorld(t, reapToml)
				good, _, err := env.Enqueue(pipeline.Request{Task: "good", Branch: "good", Stage: "build"})
				if err != nil {
					t.Fatal(err)
				}
				victim := runningOrphan(t, env, "victim")
				state := env.Store.Dir()
				for _, d := range []string{"leases", "merges"} {
					os.MkdirAll(filepath.Join(state, d), 0o755)
				}
				path := filepath.Join(state, strings.ReplaceAll(p.rel, "VICTIM", victim))
				os.RemoveAll(path)
				o := newOutside(t)
				k.plant(t, path, o)

				hook := hookEnv(repo)
				type step struct {
					args []string
					env  []string
				}
				steps := []step{
					{[]string{"status", "--json"}, repo.Env()},
					{[]string{"status", "--all"}, repo.Env()},
					{[]string{"hook", "post-commit"}, hook},
					{[]string{"show", victim}, repo.Env()},
					{[]string{"logs", victim}, repo.Env()},
					{[]string{"reap"}, repo.Env()},
					{[]string{"lease", "status"}, repo.Env()},
					{[]string{"lease", "acquire", "--target", "main", "--pid", "1", "--wait", "0s"}, repo.Env()},
					{[]string{"merge", "--branch", "good", "--check"}, repo.Env()},
					{[]string{"hook", "post-commit"}, hook},
					{[]string{"status", "--json"}, repo.Env()},
				}
				var last cliResult
				for _, s := range steps {
					start := time.Now()
					r, timedOut := runBounded(t, repo, s.env, bound, s.args...)
					if timedOut {
						t.Errorf("orch-hooks %s did not end within %v (killed): it waited on the %s at %s", strings.Join(s.args, " "), bound, k.name, path)
						continue
					}
					if d := time.Since(start); d > time.Second {
						t.Logf("orch-hooks %s took %v", strings.Join(s.args, " "), d)
					}
					switch s.args[0] {
					case "status":
						wantCode(t, "status", r, 0, "")
						last = r
					case "hook":
						wantCode(t, "hook post-commit", r, 0, "")
					}
				}
				o.check(t)

				var js struct {
					Jobs       []struct{ ID string } `json:"jobs"`
					Unreadable []struct{ Path, Error string }
				}
				if err := json.Unmarshal([]byte(last.stdout), &js); err != nil {
					t.Fatalf("status --json: %v\n%s", err, last.stdout)
				}
				if !jobIDs(js.Jobs)[good.ID] {
					t.Errorf("status --json jobs = %+v: the intact job %s is missing", js.Jobs, good.ID)
				}
				if p.reported {
					found := false
					for _, u := range js.Unreadable {
						if u.Path == path && strings.Contains(u.Error, k.what) && strings.Contains(u.Error, "remove it") {
							found = true
						}
					}
					if !found {
						t.Errorf("status --json unreadable = %+v; want %s reported as %s, with the fix", js.Unreadable, path, k.what)
					}
				}
				// Refused, never removed or replaced behind the user's back
				// — except the markers and the due file, whose names the
				// store itself retires.
				if fi, err := os.Lstat(path); err == nil && p.rel == "jobs/VICTIM.toml" && fi.Mode().IsRegular() {
					t.Errorf("the %s at %s was replaced by a regular file", k.name, path)
				}
			})
		}
	}
}
