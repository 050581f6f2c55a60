package reaper_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/procid/procidtest"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// The test binary doubles as a racing reaper (race_test.go): with
// REAPER_TEST_HELPER=pass it opens the repository $REAPER_TEST_REPO with the
// configuration in $REAPER_TEST_CONFIG, prints "ready", and then makes one
// reaper pass per line read from stdin ("go ROUND [STATE-DIR]"), printing
// the pass as one line of JSON.
const (
	helperEnv = "REAPER_TEST_HELPER"
	repoEnv   = "REAPER_TEST_REPO"
	configEnv = "REAPER_TEST_CONFIG"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "pass":
		os.Exit(passHelper())
	case "stamp":
		os.Exit(stampHelper())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// passResult is what a helper prints for each pass.
type passResult struct {
	PID   int              `json:"pid"`
	Round string           `json:"round"`
	Snap  *reaper.Snapshot `json:"snap"`
	Err   string           `json:"err,omitempty"`
}

func passHelper() int {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(passResult{PID: os.Getpid(), Err: err.Error()})
		return 1
	}
	var cfg config.Config
	if _, err := toml.DecodeFile(os.Getenv(configEnv), &cfg); err != nil {
		return fail(err)
	}
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		return fail(err)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) < 2 || f[0] != "go" {
			return fail(fmt.Errorf("helper: bad line %q", in.Text()))
		}
		dir := repo.StateDir()
		if len(f) > 2 {
			dir = f[2]
		}
		res := passResult{PID: os.Getpid(), Round: f[1]}
		s, err := gitstate.OpenStore(dir)
		if err != nil {
			return fail(err)
		}
		s.Actor = "reaper"
		env := &pipeline.Env{Repo: repo, Store: s, Config: &cfg}
		res.Snap, err = reaper.RunOnce(context.Background(), env, reaper.Options{})
		if err != nil {
			res.Err = err.Error()
		}
		if err := out.Encode(res); err != nil {
			return 1
		}
	}
	return 0
}

// base is the fixture's clock: the store stamps every transition with it
// (unless a test moves storeNow), and passes run at base plus an offset.
var base = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testStages: build (no gates) and gated (commits_ahead and a cmd: gate)
// advance to review, where the pipeline ends.
func testStages() []config.Stage {
	return []config.Stage{
		{Name: "build", Kind: config.KindCommand, Run: "true", Next: "review", FinalizeTimeoutS: 120},
		{Name: "gated", Kind: config.KindCommand, Run: "true", Gates: []string{config.GateCommitsAhead, "cmd:true"}, Next: "review", FinalizeTimeoutS: 120},
		{Name: "review", Kind: config.KindCommand, Run: "true", FinalizeTimeoutS: 120},
	}
}

// fixture is a real repository with an initialised state dir and an Env on
// it whose configuration the test sets in Go.
type fixture struct {
	t        *testing.T
	repo     *gittest.Repo
	env      *pipeline.Env
	cfg      *config.Config
	storeNow time.Time
	dead     procid.Identity // a process that has exited, made on first use
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	repo, r, s := pipelinetest.NewState(t)
	cfg := config.Default()
	cfg.Stages = testStages()
	cfg.Reaper.IntervalS = 0
	cfg.Reaper.DeadTicks = 3
	f := &fixture{t: t, repo: repo, cfg: cfg, storeNow: base}
	s.Actor = "test"
	s.Now = func() time.Time { return f.storeNow }
	f.env = &pipeline.Env{Repo: r, Store: s, Config: cfg}
	return f
}

func (f *fixture) store() *gitstate.Store { return f.env.Store }

// bootBase is the fixture's CLOCK_BOOTTIME at base: passes read the boot
// clock at bootBase plus the same offset as the wall clock, unless a test
// moves the two apart (passAt).
const bootBase = 100 * time.Hour

// clock returns Options.Now for a pass at base+d.
func clock(d time.Duration) func() time.Time {
	return func() time.Time { return base.Add(d) }
}

// bootClock returns Options.BootNow for a pass at bootBase+d.
func bootClock(d time.Duration) func() (time.Duration, bool) {
	return func() (time.Duration, bool) { return bootBase + d, true }
}

// pass runs one reaper pass at base+d, with the boot clock at bootBase+d
// (opts.Now and opts.BootNow are set from d).
func (f *fixture) pass(d time.Duration, opts ...reaper.Options) *reaper.Snapshot {
	f.t.Helper()
	var o reaper.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Now, o.BootNow = clock(d), bootClock(d)
	snap, err := reaper.RunOnce(context.Background(), f.env, o)
	if err != nil {
		f.t.Fatalf("RunOnce at base%+v: %v", d, err)
	}
	return snap
}

// running creates job (task, stage, attempt 1) on branch task and claims it
// queued → running; set fills in the rest of that same write (the monitor's
// identity, as the launcher does).
func (f *fixture) running(task, stage string, set func(j *gitstate.Job)) *gitstate.Job {
	f.t.Helper()
	return f.runningOn(task, stage, task, set)
}

func (f *fixture) runningOn(task, stage, branch string, set func(j *gitstate.Job)) *gitstate.Job {
	f.t.Helper()
	id := gitstate.JobID(task, stage, 1)
	if _, created, err := f.store().Create(&gitstate.Job{ID: id, Task: task, Stage: stage, Branch: branch,
		Target: "main", Attempt: 1, Status: gitstate.Queued}); err != nil || !created {
		f.t.Fatalf("create %s: %v, %v", id, created, err)
	}
	j, won, err := f.store().Claim(context.Background(), id, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started by test", set)
	if err != nil || !won {
		f.t.Fatalf("claim %s: %v, %v", id, won, err)
	}
	return j
}

// update changes a running job's record (as a monitor would).
func (f *fixture) update(id string, fn func(j *gitstate.Job)) *gitstate.Job {
	f.t.Helper()
	j, err := f.store().Update(context.Background(), id, "", func(j *gitstate.Job) error { fn(j); return nil })
	if err != nil {
		f.t.Fatalf("update %s: %v", id, err)
	}
	return j
}

func (f *fixture) get(id string) *gitstate.Job {
	f.t.Helper()
	j, err := f.store().Get(id)
	if err != nil {
		f.t.Fatalf("get %s: %v", id, err)
	}
	return j
}

func (f *fixture) events() []gitstate.Transition {
	f.t.Helper()
	evs, err := f.store().Events()
	if err != nil {
		f.t.Fatal(err)
	}
	return evs
}

func (f *fixture) state() *reaper.State {
	f.t.Helper()
	st, err := reaper.LoadState(f.store().Dir())
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// doneWithLostAdvance makes a done job of stage build whose next job was
// never enqueued: its advancer died between the terminal claim (which names
// the next job and leaves the pending-advance marker) and the enqueue.
func (f *fixture) doneWithLostAdvance(task string) (done *gitstate.Job, nextID string) {
	f.t.Helper()
	if f.dead.IsZero() {
		f.dead = deadProc(f.t)
	}
	j := f.running(task, "build", func(j *gitstate.Job) { j.Monitor = f.dead })
	nextID = gitstate.JobID(task, "review", 1)
	done, won, err := f.store().Claim(context.Background(), j.ID, []gitstate.Status{gitstate.Running}, gitstate.Done, "exit code 0",
		func(j *gitstate.Job) {
			code := 0
			j.ExitCode, j.FinishedAt, j.EndedBy, j.NextJob = &code, f.storeNow, gitstate.EndedByMonitor, nextID
		})
	if err != nil || !won {
		f.t.Fatalf("claim %s done: %v, %v", j.ID, won, err)
	}
	if _, err := os.Stat(filepath.Join(f.store().Dir(), "advance", j.ID)); err != nil {
		f.t.Fatalf("no pending-advance marker after the done claim: %v", err)
	}
	return done, nextID
}

func intp(n int) *int { return &n }

// ---- processes with real identities ----

// startGroup starts sh -c script as the leader of its own process group and
// returns it with its identity and its stdout. Whatever is left of the group
// is killed, and the leader waited for, when the test ends.
func startGroup(t *testing.T, script string) (*exec.Cmd, procid.Identity, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child is not reaped before Wait, so its /proc entry is there.
	id, err := procid.Of(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Only a group confirmed ours by identity is signalled: once the
		// leader is reaped and the group empty, its id may be reused.
		procid.SignalGroup(id, syscall.SIGKILL)
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, id, bufio.NewReader(out)
}

// liveProc is a live `sleep` leading its own process group.
func liveProc(t *testing.T) procid.Identity {
	t.Helper()
	_, id, _ := startGroup(t, "exec sleep 1000")
	return id
}

// deadProc is the identity of a process that has exited and been reaped.
func deadProc(t *testing.T) procid.Identity {
	t.Helper()
	cmd, id, _ := startGroup(t, "exec sleep 1000")
	cmd.Process.Kill()
	cmd.Wait()
	return id
}

// zombieProc is the identity of a process that has exited but not been
// reaped by its parent (this test) yet: state Z in /proc.
func zombieProc(t *testing.T) procid.Identity {
	t.Helper()
	cmd, id, _ := startGroup(t, "exec sleep 1000")
	cmd.Process.Kill()
	procidtest.WaitExited(t, cmd.Process.Pid)
	if st, err := procid.ReadStat(id.PID); err != nil || st.State != 'Z' {
		t.Fatalf("pid %d: %+v, %v; want a zombie", id.PID, st, err)
	}
	return id
}

// groupWithChild starts a process group whose leader has a child of its own
// (the script must start one in the background and print its pid), and
// returns the leader's and the child's identities.
func groupWithChild(t *testing.T, script string) (*exec.Cmd, procid.Identity, procid.Identity) {
	t.Helper()
	cmd, leader, out := startGroup(t, script)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the child's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("child pid %q: %v", line, err)
	}
	child, err := procid.Of(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := procid.ReadStat(pid); err != nil || st.PGID != leader.PID {
		t.Fatalf("child %d: %+v, %v; want it in group %d", pid, st, err, leader.PID)
	}
	return cmd, leader, child
}

func mustLive(t *testing.T, what string, l procid.Liveness, err error) {
	t.Helper()
	if err != nil || l != procid.Alive {
		t.Fatalf("%s: %v, %v; want alive", what, l, err)
	}
}

// ---- the state dir as files ----

// treeSnapshot is every entry under dir: kind, size, mtime and a hash of
// the bytes of each file.
func treeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		desc := fmt.Sprintf("%v mtime=%d", fi.Mode(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size=%d sha256=%x", len(data), sha256.Sum256(data))
		}
		m[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameTree(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("%s changed the state dir (-before +after):\n%s", what, diff)
	}
}

// ---- reading snapshots ----

func actionsOf(s *reaper.Snapshot, tier string) []reaper.Action {
	var out []reaper.Action
	for _, a := range s.Actions {
		if a.Tier == tier {
			out = append(out, a)
		}
	}
	return out
}

func errorPaths(s *reaper.Snapshot) map[string]string {
	m := map[string]string{}
	for _, e := range s.Errors {
		if e.Path != "" {
			m[e.Path] = e.Message
		}
	}
	return m
}

// eventsOf lists the transitions of job id in the event log as "from>to".
func eventsOf(evs []gitstate.Transition, id string) []string {
	var out []string
	for _, e := range evs {
		if e.Job == id {
			out = append(out, fmt.Sprintf("%s>%s", e.From, e.To))
		}
	}
	return out
}

// writeConfig writes cfg where a helper process can read it.
func writeConfig(t *testing.T, cfg *config.Config) string {
	t.Helper()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// helper is one long-lived racing reaper process.
type helper struct {
	pid int
	in  io.WriteCloser
	out *bufio.Reader
}

// startHelpers starts n pass helpers on repo with cfg and waits until each
// has said it is ready, so that a line written to all of them releases them
// at once.
func startHelpers(t *testing.T, n int, repo *gittest.Repo, cfg *config.Config) []*helper {
	t.Helper()
	cfgPath := writeConfig(t, cfg)
	var hs []*helper
	for i := 0; i < n; i++ {
		p := testproc.Start(t, append(repo.Env(), helperEnv+"=pass", repoEnv+"="+repo.Dir, configEnv+"="+cfgPath))
		p.WaitAtCleanup = true
		hs = append(hs, &helper{pid: p.Pid(), in: p.In, out: p.Out})
	}
	for i, h := range hs {
		line, err := h.out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			t.Fatalf("helper %d: %q, %v; want ready", i, line, err)
		}
	}
	return hs
}

// release writes line to every helper at once and collects one pass from
// each.
func release(t *testing.T, hs []*helper, line string) []passResult {
	t.Helper()
	for _, h := range hs {
		if _, err := io.WriteString(h.in, line+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	var rs []passResult
	for i, h := range hs {
		data, err := h.out.ReadBytes('\n')
		if err != nil {
			t.Fatalf("helper %d: %v", i, err)
		}
		var r passResult
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatalf("helper %d said %q: %v", i, data, err)
		}
		if r.Err != "" || r.Snap == nil {
			t.Fatalf("helper %d (pid %d): pass failed: %s", i, r.PID, r.Err)
		}
		rs = append(rs, r)
	}
	return rs
}
