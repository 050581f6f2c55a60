package crashmatrix_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
)

const hostileToml = `target = "main"

[[stages]]
name = "build"
run = "true"
next = "review"

[[stages]]
name = "review"
run = "true"
`

// cliResult is one run of the orch-hooks binary.
type cliResult struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, repo *gittest.Repo, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(cliBinary(t), args...)
	cmd.Dir = repo.Dir
	cmd.Env = repo.Env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("orch-hooks %v: %v", args, err)
	}
	return cliResult{cmd.ProcessState.ExitCode(), out.String(), errb.String()}
}

// wantCode fails unless r exited with code and, for a failure, said
// something on stderr naming want (when set).
func wantCode(t *testing.T, what string, r cliResult, code int, want string) {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, r.code, code, r.stdout, r.stderr)
		return
	}
	if code != 0 && !strings.Contains(r.stderr, "orch-hooks: ") {
		t.Errorf("%s: exit %d with no error message: %q", what, code, r.stderr)
	}
	if want != "" && !strings.Contains(r.stderr+r.stdout, want) {
		t.Errorf("%s: output does not mention %q:\nstdout: %s\nstderr: %s", what, want, r.stdout, r.stderr)
	}
}

// snapshotRecords returns every job record's bytes, by file name.
func snapshotRecords(t *testing.T, env *pipeline.Env) map[string]string {
	t.Helper()
	dir := filepath.Join(env.Store.Dir(), "jobs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if e.Type().IsRegular() {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[e.Name()] = string(b)
		}
	}
	return out
}

// TestHostileRecords: damaged job records are reported, never stop a
// command or a pass, are never deleted, and the other records survive: a
// queued job is still listed and a running job whose monitor died is still
// reaped.
func TestHostileRecords(t *testing.T) {
	t.Parallel() // after the matrix and the stress test, while the binary builds
	rng := rand.New(rand.NewSource(7))
	binary := make([]byte, 4096)
	rng.Read(binary)
	padding := []byte("# padding line of a huge record\n")
	huge := bytes.Repeat(padding, 20<<20/len(padding)) // 20 MiB
	// Every state file is read with a cap (statefile.MaxSizeDefault): a
	// record over it is refused unread with this error, however valid.
	tooLarge := []string{"file too large", fmt.Sprintf("%d-byte cap", statefile.MaxSizeDefault), "remove or restore it"}
	cases := []struct {
		name string
		make func(t *testing.T, path string, valid []byte)
		// readable: the damaged-looking record is in fact a valid record
		// (comments before it, under the cap) and must be read, not reported.
		readable bool
		// wantErr: what the reported error must say.
		wantErr []string
	}{
		{"truncated", func(t *testing.T, p string, valid []byte) {
			// Cut inside the quoted id, so the cut cannot fall on a line end
			// that leaves valid TOML (see TestTruncatedRecordsDecode).
			i := bytes.Index(valid, []byte("id = \"")) + len("id = \"") + 2
			writeFile(t, p, valid[:i])
		}, false, nil},
		{"empty", func(t *testing.T, p string, _ []byte) { writeFile(t, p, nil) }, false, nil},
		{"binary", func(t *testing.T, p string, _ []byte) { writeFile(t, p, binary) }, false, nil},
		{"big-valid-under-cap", func(t *testing.T, p string, valid []byte) {
			pad := bytes.Repeat(padding, (statefile.MaxSizeDefault-len(valid))/len(padding))
			writeFile(t, p, append(pad, valid...))
		}, true, nil},
		{"huge-record-valid-20MiB", func(t *testing.T, p string, valid []byte) {
			writeFile(t, p, append(append([]byte(nil), huge...), valid...))
		}, false, tooLarge},
		{"huge-record-just-over-cap", func(t *testing.T, p string, valid []byte) {
			pad := bytes.Repeat([]byte("#"), statefile.MaxSizeDefault+1-len(valid)-1)
			writeFile(t, p, append(append(pad, '\n'), valid...))
		}, false, tooLarge},
		{"huge-record-garbage-20MiB", func(t *testing.T, p string, _ []byte) {
			writeFile(t, p, bytes.Repeat([]byte{0xff, '=', '['}, 20<<20/3))
		}, false, tooLarge},
		{"directory", func(t *testing.T, p string, _ []byte) {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		}, false, nil},
	}
	// Passes that may end a job whose monitor is dead at once.
	reapToml := strings.Replace(hostileToml, "target = \"main\"\n", "target = \"main\"\n\n[reaper]\ndead_ticks = 1\ninterval_s = 0\n", 1)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			repo, env := newWorld(t, reapToml)
			good, _, err := env.Enqueue(pipeline.Request{Task: "good", Branch: "good", Stage: "build"})
			if err != nil {
				t.Fatal(err)
			}
			orphan := runningOrphan(t, env, "orphan")
			bad, _, err := env.Enqueue(pipeline.Request{Task: "bad", Branch: "bad", Stage: "build"})
			if err != nil {
				t.Fatal(err)
			}
			valid, err := os.ReadFile(env.Store.RecordPath(bad.ID))
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(env.Store.RecordPath(bad.ID))
			c.make(t, env.Store.RecordPath(bad.ID), valid)
			before := snapshotRecords(t, env)

			st := runCLI(t, repo, "status", "--json", "--all")
			wantCode(t, "status --json --all", st, 0, "")
			var js struct {
				Jobs       []struct{ ID string } `json:"jobs"`
				Unreadable []struct{ Path, Error string }
			}
			if err := json.Unmarshal([]byte(st.stdout), &js); err != nil {
				t.Fatalf("status --json: %v\n%s", err, st.stdout)
			}
			if c.readable {
				if len(js.Unreadable) != 0 || len(js.Jobs) != 3 {
					t.Errorf("status --json: jobs %+v, unreadable %+v; want all three jobs read", js.Jobs, js.Unreadable)
				}
				wantCode(t, "reap", runCLI(t, repo, "reap"), 0, "")
				wantCode(t, "show the big job", runCLI(t, repo, "show", bad.ID), 0, bad.ID)
				return
			}
			if len(js.Unreadable) != 1 || js.Unreadable[0].Path != env.Store.RecordPath(bad.ID) || js.Unreadable[0].Error == "" {
				t.Errorf("status --json unreadable = %+v, want the damaged record with its error", js.Unreadable)
			}
			for _, want := range c.wantErr {
				if len(js.Unreadable) == 1 && !strings.Contains(js.Unreadable[0].Error, want) {
					t.Errorf("status --json: the error %q does not say %q", js.Unreadable[0].Error, want)
				}
			}
			if ids := jobIDs(js.Jobs); len(ids) != 2 || !ids[good.ID] || !ids[orphan] {
				t.Errorf("status --json jobs = %+v, want the intact jobs %s and %s", js.Jobs, good.ID, orphan)
			}
			wantCode(t, "reap", runCLI(t, repo, "reap"), 0, "")
			if j, err := env.Store.Get(orphan); err != nil || j.Status != gitstate.Failed || j.EndedBy != gitstate.EndedByReaperDead {
				t.Errorf("the orphaned running job beside the damaged record: %+v, %v; want failed by %s", j, err, gitstate.EndedByReaperDead)
			}
			show := runCLI(t, repo, "show", bad.ID)
			wantCode(t, "show the damaged job", show, 1, bad.ID)
			for _, want := range c.wantErr {
				if !strings.Contains(show.stderr, want) {
					t.Errorf("show of the damaged job: %q does not say %q", show.stderr, want)
				}
			}
			wantCode(t, "show the intact job", runCLI(t, repo, "show", good.ID, "--json"), 0, good.ID)
			wantCode(t, "status (text)", runCLI(t, repo, "status"), 0, "")

			after := snapshotRecords(t, env)
			for name, b := range before {
				if name == orphan+".toml" {
					continue // reaped: the one record that must change
				}
				if after[name] != b {
					t.Errorf("record %s changed or vanished", name)
				}
			}
			if _, err := os.Lstat(env.Store.RecordPath(bad.ID)); err != nil {
				t.Errorf("the damaged record was removed: %v", err)
			}
		})
	}
}

// runningOrphan enqueues a job and claims it running for a monitor that is
// already dead (a started and killed process), as a crashed `run` leaves it.
func runningOrphan(t *testing.T, env *pipeline.Env, task string) string {
	t.Helper()
	j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: task, Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	mon, err := procid.Of(sleeper.Process.Pid)
	sleeper.Process.Kill()
	sleeper.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, won, err := env.Store.Claim(context.Background(), j.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", func(r *gitstate.Job) {
		r.Monitor = mon
	}); err != nil || !won {
		t.Fatalf("claim: %v %v", won, err)
	}
	return j.ID
}

func jobIDs(js []struct{ ID string }) map[string]bool {
	out := map[string]bool{}
	for _, j := range js {
		out[j.ID] = true
	}
	return out
}

// TestTruncatedRecordsDecode cuts a real record at every byte and decodes
// each prefix. A prefix that decodes without error has silently lost the
// rest of the record (TOML has no end marker); DecodeJob should refuse it
// (for example, by requiring the fields every record has: version, id,
// status, created_at, and a history ending in the status). Reported as a
// finding, not a failure, until the owner decides.
func TestTruncatedRecordsDecode(t *testing.T) {
	t.Parallel()
	_, env := newWorld(t, hostileToml)
	j, _, err := env.Enqueue(pipeline.Request{Task: "cut", Branch: "cut", Stage: "build"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Run(context.Background(), j.ID, pipeline.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(env.Store.RecordPath(j.ID))
	if err != nil {
		t.Fatal(err)
	}
	accepted, withHistory := 0, 0
	var example string
	for n := 1; n < len(full); n++ {
		got, err := gitstate.DecodeJob(full[:n])
		if err != nil {
			continue
		}
		accepted++
		if len(got.History) > 0 {
			withHistory++
		}
		if example == "" && got.ID != "" {
			example = fmt.Sprintf("cut at %d/%d bytes: id %q status %q, %d history entries", n, len(full), got.ID, got.Status, len(got.History))
		}
	}
	t.Logf("FINDING: %d of %d truncations of a done job's record decode without error (%d with some history); e.g. %s", accepted, len(full)-1, withHistory, example)
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHostileStateDir: a state dir that is a symlink works; a read-only one
// fails clearly and changes nothing.
func TestHostileStateDir(t *testing.T) {
	t.Parallel()
	t.Run("symlinked", func(t *testing.T) {
		t.Parallel()
		repo, env := newWorld(t, hostileToml)
		state := env.Store.Dir()
		elsewhere := filepath.Join(t.TempDir(), "orch-state")
		if err := os.Rename(state, elsewhere); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, state); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/sym")
		wantCode(t, "enqueue through a symlinked state dir", r, 0, "")
		id := strings.TrimSpace(r.stdout)
		if _, err := os.Stat(filepath.Join(elsewhere, "jobs", id+".toml")); err != nil {
			t.Errorf("the record is not in the symlink's target: %v", err)
		}
		wantCode(t, "run", runCLI(t, repo, "run", id), 0, "")
		wantCode(t, "reap", runCLI(t, repo, "reap"), 0, "")
		wantCode(t, "show", runCLI(t, repo, "show", id), 0, "done")
		wantCode(t, "lease acquire", runCLI(t, repo, "lease", "acquire", "--target", "main", "--pid", "1"), 0, "")
	})
	t.Run("read-only", func(t *testing.T) {
		t.Parallel()
		repo, env := newWorld(t, hostileToml)
		good, _, err := env.Enqueue(pipeline.Request{Task: "good", Branch: "good", Stage: "build"})
		if err != nil {
			t.Fatal(err)
		}
		before := snapshotRecords(t, env)
		dirs := []string{env.Store.Dir()}
		for _, d := range []string{"jobs", "active", "advance", "locks", "logs"} {
			dirs = append(dirs, filepath.Join(env.Store.Dir(), d))
		}
		for _, d := range dirs {
			if err := os.Chmod(d, 0o555); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, d := range dirs {
				os.Chmod(d, 0o755)
			}
		})
		probe := filepath.Join(env.Store.Dir(), "jobs", "probe")
		if f, err := os.Create(probe); err == nil {
			f.Close()
			os.Remove(probe)
			t.Skipf("a 0555 directory is writable here (running as uid %d, which ignores permissions): cannot test a read-only state dir", os.Geteuid())
		}
		r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/ro")
		wantCode(t, "enqueue into a read-only state dir", r, 1, "permission denied")
		wantCode(t, "status", runCLI(t, repo, "status"), 0, "")
		if after := snapshotRecords(t, env); len(after) != len(before) || after[good.ID+".toml"] != before[good.ID+".toml"] {
			t.Errorf("records changed: %v", after)
		}
	})
}

// TestHostileClock: the clock moved back never makes a job old enough to
// reap; moved forward past max_running, the backstop applies once.
func TestHostileClock(t *testing.T) {
	t.Parallel()
	_, env := newWorld(t, hostileToml)
	env.Config.Reaper.MaxRunningS = 3600
	env.Config.Reaper.FinalizeGraceS = 300
	env.Config.Reaper.IntervalS = 0
	env.Config.Reaper.DeadTicks = 1
	// A live process stands for the job's monitor.
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	mon, err := procid.Of(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	env.Store.Now = func() time.Time { return t0 }
	mk := func(task string, exit bool) string {
		j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: task, Stage: "build"})
		if err != nil {
			t.Fatal(err)
		}
		if _, won, err := env.Store.Claim(context.Background(), j.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started", func(r *gitstate.Job) {
			r.Monitor = mon
			if exit {
				zero := 0
				r.ExitCode, r.FinishedAt = &zero, t0
			}
		}); err != nil || !won {
			t.Fatalf("claim: %v %v", won, err)
		}
		return j.ID
	}
	running, finalizing := mk("clock-run", false), mk("clock-fin", true)
	pass := func(at time.Time) *reaper.Snapshot {
		snap, err := reaper.RunOnce(context.Background(), env, reaper.Options{Now: func() time.Time { return at }, StopGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	status := func(id string) gitstate.Status {
		j, err := env.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return j.Status
	}
	for _, back := range []time.Duration{-time.Minute, -24 * time.Hour, -100 * 365 * 24 * time.Hour} {
		if s := pass(t0.Add(back)); s.Tier1+s.Tier2+s.Tier3 != 0 {
			t.Errorf("clock moved back %s: the pass ended jobs: %+v", back, s.Actions)
		}
	}
	if status(running) != gitstate.Running || status(finalizing) != gitstate.Running {
		t.Fatalf("after the clock moved back: %s, %s; want both running", status(running), status(finalizing))
	}
	// Forward, inside the limits: still nothing.
	if s := pass(t0.Add(10 * time.Second)); s.Tier1+s.Tier2+s.Tier3 != 0 {
		t.Errorf("10 s later: %+v", s.Actions)
	}
	// Forward past finalize_grace: the finalizing job is finalized (tier
	// 2), the other left alone.
	s := pass(t0.Add(10 * time.Minute))
	if s.Tier2 != 1 || s.Tier1+s.Tier3 != 0 {
		t.Errorf("10 min later: tiers %d/%d/%d, want only the finalizing job by tier 2: %+v", s.Tier1, s.Tier2, s.Tier3, s.Actions)
	}
	// Forward past max_running: the backstop ends the other, once.
	s = pass(t0.Add(2 * time.Hour))
	if s.Tier3 != 1 || s.Tier1+s.Tier2 != 0 {
		t.Errorf("2 h later: tiers %d/%d/%d, want one tier-3 end: %+v", s.Tier1, s.Tier2, s.Tier3, s.Actions)
	}
	if s := pass(t0.Add(3 * time.Hour)); s.Tier1+s.Tier2+s.Tier3 != 0 {
		t.Errorf("a second forward pass ended jobs again: %+v", s.Actions)
	}
	if j, _ := env.Store.Get(running); j.Status != gitstate.Failed || j.EndedBy != gitstate.EndedByReaperMaxRunning {
		t.Errorf("running job: %s by %s, want failed by %s", j.Status, j.EndedBy, gitstate.EndedByReaperMaxRunning)
	}
	if j, _ := env.Store.Get(finalizing); !j.Status.Terminal() || j.EndedBy != gitstate.EndedByReaperExitCode {
		t.Errorf("finalizing job: %s by %s, want ended by %s", j.Status, j.EndedBy, gitstate.EndedByReaperExitCode)
	}
}

// TestHostileNames: branch names git refuses, or that would read as an
// option, are refused with exit 2; odd names git accepts are stored
// exactly and reach file names only through the job id's safe alphabet.
func TestHostileNames(t *testing.T) {
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	cases := []struct {
		branch string
		code   int
	}{
		{"a..b", 2}, {"../../etc/passwd", 2}, {"a b", 2}, {" lead", 2}, {"-x", 2}, {"--force", 2},
		{"a\x01b", 2}, {"a\nb", 2}, {"a~b", 2}, {"a:b", 2}, {"x.lock", 2}, {".hidden", 2}, {"a//b", 2}, {"", 2},
		{`a"b`, 0}, {"a'b", 0}, {"ünïcødé/branch", 0}, {"日本語", 0}, {"feat/ok-1.2_x", 0},
	}
	for _, c := range cases {
		before := snapshotRecords(t, env)
		r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch="+c.branch)
		wantCode(t, "enqueue --branch="+strconvQuote(c.branch), r, c.code, "")
		after := snapshotRecords(t, env)
		if c.code != 0 {
			if len(after) != len(before) {
				t.Errorf("refused branch %q still wrote a record", c.branch)
			}
			if !strings.Contains(r.stderr, "invalid name") && !strings.Contains(r.stderr, "branch") {
				t.Errorf("refusal of %q does not say what was wrong: %s", c.branch, r.stderr)
			}
			continue
		}
		id := strings.TrimSpace(r.stdout)
		if err := gitstate.ValidateJobID(id); err != nil {
			t.Errorf("branch %q: job id %q: %v", c.branch, id, err)
		}
		j, err := env.Store.Get(id)
		if err != nil || j.Branch != c.branch || j.Task != c.branch {
			t.Errorf("branch %q: stored %+v, %v", c.branch, j, err)
		}
		for name, b := range before {
			if after[name] != b {
				t.Errorf("record %s changed while enqueuing %q", name, c.branch)
			}
		}
	}
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

// TestHostileConfig: orch.toml with wrong types, unknown keys, a cycle in
// next, or a next stage that does not exist: exit 2, naming file and key.
func TestHostileConfig(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, toml, want string }{
		{"wrong-type", "target = \"main\"\nmax_concurrency = \"one\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\n", "max_concurrency"},
		{"unknown-key", "target = \"main\"\nbogus = 1\n[[stages]]\nname = \"a\"\nrun = \"true\"\n", "bogus"},
		{"unknown-stage-key", "target = \"main\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\nnxet = \"b\"\n", "nxet"},
		{"cycle", "target = \"main\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\nnext = \"b\"\n[[stages]]\nname = \"b\"\nrun = \"true\"\nnext = \"a\"\n", "next"},
		{"self-cycle", "target = \"main\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\nnext = \"a\"\n", "next"},
		{"missing-next", "target = \"main\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\nnext = \"zz\"\n", "zz"},
		{"negative", "target = \"main\"\n[reaper]\ndead_ticks = -1\n[[stages]]\nname = \"a\"\nrun = \"true\"\n", "dead_ticks"},
		{"not-toml", "target = \"main\n[[stages\n", config.FileName},
		{"binary", "\x00\x01\x02\xff", config.FileName},
		// Valid TOML, but 2 MiB: refused unread (statefile.MaxSizeDefault).
		{"huge", strings.Repeat("# padding\n", 2<<20/10) + "target = \"main\"\n[[stages]]\nname = \"a\"\nrun = \"true\"\n", "file too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			repo, env := newWorld(t, hostileToml)
			if _, _, err := env.Enqueue(pipeline.Request{Task: "keep", Branch: "keep", Stage: "build"}); err != nil {
				t.Fatal(err)
			}
			before := snapshotRecords(t, env)
			writeFile(t, filepath.Join(repo.Dir, config.FileName), []byte(c.toml))
			for _, args := range [][]string{{"enqueue", "--branch", "feat/c"}, {"reap"}} {
				r := runCLI(t, repo, args...)
				wantCode(t, strings.Join(args, " "), r, 2, c.want)
				if !strings.Contains(r.stderr, config.FileName) {
					t.Errorf("%s: error does not name the file: %s", args[0], r.stderr)
				}
			}
			if after := snapshotRecords(t, env); len(after) != len(before) {
				t.Errorf("records changed under a bad orch.toml: %d → %d", len(before), len(after))
			}
		})
	}
}

// TestHostileStageAndToken: a stage orch.toml does not define, at enqueue
// and in a record; a lease token that is not a number.
func TestHostileStageAndToken(t *testing.T) {
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	wantCode(t, "enqueue --stage nope", runCLI(t, repo, "enqueue", "--stage", "nope", "--branch", "feat/s"), 2, "nope")

	// A queued job whose stage was removed from orch.toml: run fails it
	// with a clear reason, and nothing else changes.
	j, _, err := env.Enqueue(pipeline.Request{Task: "gone", Branch: "gone", Stage: "review"})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(repo.Dir, config.FileName), []byte("target = \"main\"\n[[stages]]\nname = \"build\"\nrun = \"true\"\n"))
	r := runCLI(t, repo, "run", j.ID)
	if r.code == 0 {
		t.Errorf("run of a job whose stage is gone: exit 0")
	}
	got, err := env.Store.Get(j.ID)
	if err != nil || got.Status != gitstate.Failed || !strings.Contains(got.Reason, "review") {
		t.Errorf("job of a removed stage: %+v, %v; want failed naming the stage", got, err)
	}

	for _, args := range [][]string{
		{"lease", "release", "--target", "main", "--token", "abc"},
		{"lease", "release", "--target", "main", "--token", "-1"},
		{"lease", "release", "--target", "main", "--token", "1e3"},
		{"lease", "release", "--target", "main", "--token", "99999999999999999999999"},
		{"merge", "--branch", "gone", "--token", "x1"},
	} {
		wantCode(t, strings.Join(args, " "), runCLI(t, repo, args...), 2, "token")
	}
	// A lease record whose token is not a number is reported, not trusted.
	lm := lease.Open(env.Store.Dir())
	os.MkdirAll(filepath.Join(env.Store.Dir(), "leases"), 0o755)
	writeFile(t, filepath.Join(env.Store.Dir(), "leases", "main.toml"), []byte("version = 1\ntarget = \"main\"\ntoken = \"seven\"\n"))
	if _, err := lm.Get("main"); err == nil {
		t.Errorf("a lease record with token = \"seven\" was read without error")
	}
	wantCode(t, "lease status", runCLI(t, repo, "lease", "status"), 0, "")

	// A lease record over the size cap is refused unread and reported
	// like a damaged one; the command and a pass go on.
	writeFile(t, filepath.Join(env.Store.Dir(), "leases", "big.toml"),
		append(bytes.Repeat([]byte("# padding\n"), 2<<20/10), "version = 1\ntarget = \"big\"\ntoken = 1\n"...))
	r = runCLI(t, repo, "lease", "status", "--json")
	wantCode(t, "lease status --json with a huge record", r, 0, "")
	var ls struct {
		Unreadable []struct{ Path, Error string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &ls); err != nil {
		t.Fatalf("lease status --json: %v\n%s", err, r.stdout)
	}
	found := false
	for _, u := range ls.Unreadable {
		found = found || strings.HasSuffix(u.Path, "big.toml") && strings.Contains(u.Error, "file too large")
	}
	if !found {
		t.Errorf("lease status --json unreadable = %+v; want big.toml, too large", ls.Unreadable)
	}
	wantCode(t, "reap with a huge lease record", runCLI(t, repo, "reap"), 0, "")
}

// TestSecurityModes: after a pipeline run, a lease and a reaper pass, no
// file or directory under the state dir is group- or world-writable.
func TestSecurityModes(t *testing.T) {
	t.Parallel()
	repo, env := newWorld(t, hostileToml)
	r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/modes")
	wantCode(t, "enqueue", r, 0, "")
	wantCode(t, "run", runCLI(t, repo, "run", strings.TrimSpace(r.stdout)), 0, "")
	wantCode(t, "lease acquire", runCLI(t, repo, "lease", "acquire", "--target", "main", "--pid", "1"), 0, "")
	wantCode(t, "reap", runCLI(t, repo, "reap"), 0, "")
	n := 0
	err := filepath.WalkDir(env.Store.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		n++
		if fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s: mode %v is group- or world-writable", p, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("only %d entries under the state dir: did the run write anything?", n)
	}
}

// TestSecurityNoShellInterpolation: names that would run a command if
// orch-hooks pasted them into a sh -c string never run it. The stage
// command, finalize step and cmd: gate read them from $ORCH_* (quoted, as a
// user should); orch-hooks passes them as environment and argv only.
func TestSecurityNoShellInterpolation(t *testing.T) {
	t.Parallel()
	marks := t.TempDir()
	toml := `target = "main"

[[stages]]
name = "build"
run = 'git commit -q --allow-empty -m built && printf "%s|%s\n" "$ORCH_TASK" "$ORCH_BRANCH" > "$ORCH_WORKTREE/../names.out"'
gates = ["commits_ahead", 'cmd:test -n "$ORCH_BRANCH"']
finalize = ['printf "%s\n" "$ORCH_BRANCH" >/dev/null']
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
gates = ["mergeable"]
`
	repo, env := newWorld(t, toml)
	branch := "x;touch$IFS" + marks + "/pwned-branch"
	task := "t$(touch${IFS}" + marks + "/pwned-task)`touch${IFS}" + marks + "/pwned-tick`"

	// Rejecting shell metacharacters at validation would be the stricter
	// contract; git accepts these names, and so does ValidateBranch. Record
	// which one holds; what must hold either way is that nothing runs.
	if err := gitstate.ValidateBranch(branch); err != nil {
		t.Logf("branch %q rejected at validation: %v", branch, err)
		return
	}
	t.Logf("branch %q passes validation (git accepts it); checking it is never executed", branch)
	j, _, err := env.Enqueue(pipeline.Request{Task: task, Branch: branch, Stage: "build"})
	if err != nil {
		t.Logf("task %q refused: %v; running with the branch as task", task, err)
		if j, _, err = env.Enqueue(pipeline.Request{Branch: branch, Stage: "build"}); err != nil {
			t.Fatal(err)
		}
	}
	for id := j.ID; id != ""; {
		res, err := env.Run(context.Background(), id, pipeline.RunOptions{})
		if err != nil {
			t.Fatalf("run %s: %v", id, err)
		}
		if res.Job.Status != gitstate.Done {
			log, _ := os.ReadFile(env.Store.LogPath(id))
			t.Fatalf("job %s: %s (%s)\n%s", id, res.Job.Status, res.Job.Reason, log)
		}
		id = ""
		if res.Next != nil {
			id = res.Next.ID
		}
	}
	ents, _ := os.ReadDir(marks)
	for _, e := range ents {
		t.Errorf("a name was executed by a shell: %s exists", e.Name())
	}
	out, err := os.ReadFile(filepath.Join(env.WorktreePath(j.Task), "..", "names.out"))
	if err != nil || strings.TrimSpace(string(out)) != j.Task+"|"+branch {
		t.Errorf("the stage saw %q, %v; want the names verbatim", out, err)
	}
	if ok, _ := env.Repo.IsAncestor(context.Background(), repo.Git(repo.Dir, "rev-parse", "refs/heads/"+branch), repo.Git(repo.Dir, "rev-parse", "main")); !ok {
		t.Errorf("the branch was not merged")
	}
}

// fullDiskScript runs in a private mount namespace (unshare -rm), with the
// state dir on a 256 KiB tmpfs that only this namespace sees. Each step's
// stdout, stderr and exit code go to $OUT/<step>.{out,err,rc}, and copies
// of the state dir to $OUT/<name>/, outside the tmpfs, for the test to
// judge once the namespace (and the mount) is gone.
const fullDiskScript = `
set -u
step() { name=$1; shift; "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; echo $? >"$OUT/$name.rc"; }
id() { cat "$OUT/$1.out"; }
snap() { cp -a "$STATE" "$OUT/$1" && rm -f "$OUT/$1/filler"; }
fill() { dd if=/dev/zero of="$STATE/filler" bs=4096 2>"$OUT/fill.err"; }

mount -t tmpfs -o size=256k,mode=0755 tmpfs "$STATE" || exit 90

step init "$ORCH" init
for b in a b c; do step enq_$b "$ORCH" enqueue --stage build --branch feat/$b; done
step run_c "$ORCH" run "$(id enq_c)"
step lease0 "$ORCH" lease acquire --target side --pid 1
step reap0 "$ORCH" reap
snap before

# Full: not one byte free.
fill
step full_enqueue "$ORCH" enqueue --stage build --branch feat/new
step full_run "$ORCH" run "$(id enq_a)"
step full_cancel "$ORCH" cancel "$(id enq_b)"
step full_lease "$ORCH" lease acquire --target main --pid 1
step full_status "$ORCH" status --json --all
step full_reap "$ORCH" reap
snap full

# Freed: the same commands succeed.
rm -f "$STATE/filler"
step free_enqueue "$ORCH" enqueue --stage build --branch feat/new
step free_run "$ORCH" run "$(id enq_a)"
step free_cancel "$ORCH" cancel "$(id enq_b)"
step free_lease "$ORCH" lease acquire --target main --pid 1
step free_reap "$ORCH" reap
step free_status "$ORCH" status --json --all
snap after

# One page free: a new record fits, the event line after it does not. Fill
# the event log's last page first, so that the line crosses into a page
# that cannot be had and is cut short by ENOSPC.
i=0
while :; do
	i=$((i+1))
	[ $i -gt 200 ] && exit 91
	"$ORCH" enqueue --stage build --branch feat/p$i >/dev/null 2>>"$OUT/pad.err" || exit 92
	size=$(stat -c %s "$STATE/events.jsonl")
	line=$(tail -n 1 "$STATE/events.jsonl" | wc -c)
	room=$((4096 - size % 4096))
	[ $room -lt $((line - 16)) ] && break
done
fill
size=$(stat -c %s "$STATE/filler")
truncate -s $((size - 4096)) "$STATE/filler"
step edge_enqueue "$ORCH" enqueue --stage build --branch feat/edge
rm -f "$STATE/filler"
step last_enqueue "$ORCH" enqueue --stage build --branch feat/last
snap last
`

// TestHostileFullDisk: with the state dir on a full file system, every
// command that writes fails with exit 1 and an error that names the
// problem, nothing on disk changes (every record parses, with its previous
// content; no temporary file is left), and once space is freed the same
// commands succeed. An event line cut short by a full disk is taken back
// off, so the log keeps only whole lines.
func TestHostileFullDisk(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare(1) is not installed: cannot mount a private tmpfs to fill up")
	}
	probe := t.TempDir()
	if out, err := exec.Command("unshare", "-rm", "sh", "-c", `mount -t tmpfs -o size=64k tmpfs "$1"`, "sh", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs in a private mount namespace here (unshare -rm ... mount -t tmpfs: %v: %s): needs root or unprivileged user namespaces", err, bytes.TrimSpace(out))
	}
	bin := cliBinary(t)
	repo, _ := newWorld(t, hostileToml)
	state := filepath.Join(repo.Dir, ".git", "orch")
	out := t.TempDir()
	cmd := exec.Command("unshare", "-rm", "sh", "-c", fullDiskScript)
	cmd.Dir = repo.Dir
	cmd.Env = append(repo.Env(), "ORCH="+bin, "STATE="+state, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		if cmd.ProcessState.ExitCode() == 90 {
			t.Skipf("mount of the tmpfs on %s failed: %s", state, b)
		}
		t.Fatalf("script: %v\n%s", err, b)
	}
	step := func(name string) cliResult {
		t.Helper()
		read := func(ext string) string {
			b, err := os.ReadFile(filepath.Join(out, name+"."+ext))
			if err != nil {
				t.Fatalf("step %s did not run: %v", name, err)
			}
			return string(b)
		}
		var code int
		fmt.Sscan(read("rc"), &code)
		return cliResult{code, read("out"), read("err")}
	}
	for _, s := range []string{"init", "enq_a", "enq_b", "enq_c", "run_c", "lease0", "reap0"} {
		wantCode(t, s+" (before the disk is full)", step(s), 0, "")
	}
	idA, idB := strings.TrimSpace(step("enq_a").stdout), strings.TrimSpace(step("enq_b").stdout)

	// Full: each write fails, clearly, with exit 1 (an operational error).
	const enospc = "no space left on device"
	for _, s := range []string{"full_enqueue", "full_run", "full_cancel", "full_lease"} {
		r := step(s)
		wantCode(t, s, r, 1, enospc)
		if r.code == 1 && !strings.Contains(r.stderr, "free space") {
			t.Errorf("%s: the error does not say what to do: %s", s, r.stderr)
		}
		if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
			t.Errorf("%s panicked: %s", s, r.stderr)
		}
	}
	if r := step("full_enqueue"); r.stdout != "" {
		t.Errorf("a failed enqueue printed an id: %q", r.stdout)
	}
	// Reading needs no space; a pass records what it could not write.
	st := step("full_status")
	wantCode(t, "status on a full disk", st, 0, "")
	if ids := statusJobs(t, st); len(ids) != 4 || ids[idA] != "queued" || ids[idB] != "queued" {
		t.Errorf("status on a full disk: %v; want the 4 jobs, %s and %s still queued", ids, idA, idB)
	}
	// A pass that could not write its state says so and exits 1 (DESIGN.md
	// "State on disk": never silently).
	wantCode(t, "reap on a full disk", step("full_reap"), 1, enospc)

	// Nothing changed: every record parses, byte for byte as before, and no
	// temporary file is left anywhere in the state dir.
	before, full := readState(t, filepath.Join(out, "before")), readState(t, filepath.Join(out, "full"))
	for name, b := range before {
		if full[name] != b {
			t.Errorf("%s changed on the full disk:\nbefore: %q\nafter:  %q", name, b, full[name])
		}
	}
	for name := range full {
		if _, ok := before[name]; !ok && !strings.HasPrefix(name, "active/") && !strings.HasPrefix(name, "running/") && !strings.HasPrefix(name, "locks/") && !strings.HasPrefix(name, "logs/") {
			t.Errorf("%s appeared on the full disk", name)
		}
	}
	checkStateParses(t, filepath.Join(out, "full"))
	if _, err := reaper.LoadState(filepath.Join(out, "full")); err != nil {
		t.Errorf("reaper state after passes on a full disk: %v", err)
	}

	// Freed: the same commands succeed.
	for _, s := range []string{"free_enqueue", "free_run", "free_cancel", "free_lease", "free_reap", "free_status"} {
		wantCode(t, s+" (space freed)", step(s), 0, "")
	}
	ids := statusJobs(t, step("free_status"))
	if ids[idA] != "done" || ids[idB] != "cancelled" || ids[strings.TrimSpace(step("free_enqueue").stdout)] != "queued" {
		t.Errorf("after freeing space: %v; want %s done, %s cancelled and the new job queued", ids, idA, idB)
	}
	checkStateParses(t, filepath.Join(out, "after"))

	// The edge: the record is written, its event line is cut short. The
	// command succeeds with a warning, the part of the line written is
	// taken back off, and the next line is whole.
	edge := step("edge_enqueue")
	wantCode(t, "enqueue with a record's worth of space", edge, 0, "")
	if !strings.Contains(edge.stderr, "event log") || !strings.Contains(edge.stderr, enospc) {
		t.Errorf("the event line did not hit the full disk (the test's page arithmetic is off): stderr %q", edge.stderr)
	}
	last := step("last_enqueue")
	wantCode(t, "enqueue after freeing space", last, 0, "")
	checkStateParses(t, filepath.Join(out, "last"))
	evs := readState(t, filepath.Join(out, "last"))["events.jsonl"]
	if !strings.Contains(evs, `"job":"`+strings.TrimSpace(last.stdout)+`"`) {
		t.Errorf("the event of the enqueue after the cut line is missing")
	}
}

// statusJobs decodes `status --json` into job id → status.
func statusJobs(t *testing.T, r cliResult) map[string]string {
	t.Helper()
	var js struct {
		Jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"jobs"`
		Unreadable []struct{ Path, Error string } `json:"unreadable"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if len(js.Unreadable) != 0 {
		t.Errorf("status --json: unreadable records %+v", js.Unreadable)
	}
	out := map[string]string{}
	for _, j := range js.Jobs {
		out[j.ID] = j.Status
	}
	return out
}

// readState returns every regular file under a state dir, by slash path.
func readState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkStateParses: every job record, lease record and event line under a
// state dir parses, and no temporary file is left.
func checkStateParses(t *testing.T, dir string) {
	t.Helper()
	for name, b := range readState(t, dir) {
		switch {
		case statefile.IsTemp(filepath.Base(name)):
			t.Errorf("%s: a temporary file was left in the state dir", name)
		case strings.HasPrefix(name, "jobs/"):
			if _, err := gitstate.DecodeJob([]byte(b)); err != nil {
				t.Errorf("%s does not parse: %v", name, err)
			}
		case name == "events.jsonl":
			for i, line := range strings.Split(strings.TrimSuffix(b, "\n"), "\n") {
				var ev map[string]any
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Errorf("events.jsonl line %d does not parse (%v): %q", i+1, err, line)
				}
			}
			if b != "" && !strings.HasSuffix(b, "\n") {
				t.Errorf("events.jsonl ends in a partial line: %q", b[max(0, len(b)-80):])
			}
		}
	}
	leases, bad, err := lease.Open(dir).List()
	if err != nil || len(bad) != 0 {
		t.Errorf("leases under %s: %v, unreadable %v", dir, err, bad)
	}
	_ = leases
}
