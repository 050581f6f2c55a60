package crashmatrix_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
)

var (
	stressJobs = flag.Int("stress.jobs", 0, "jobs in TestStress (two per task: build and merge); default 60 (24 under -race), 500 for the long run")
	stressSeed = flag.Int64("stress.seed", 1, "seed of TestStress's random kills and merge orders")
)

// stressToml: build commits on the task's branch and advances to a merge
// stage; the reaper judges on one observation.
const stressToml = `target = "main"

[reaper]
dead_ticks = 1
interval_s = 0

[[stages]]
name = "build"
run = "git commit -q --allow-empty -m built"
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
`

const (
	stressReapers  = 16
	stressMonitors = 16
	stressMergers  = 4
	killPercent    = 15 // chance a monitor is killed as it starts a job
)

// proc is one helper process of the stress test.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout, line by line; closed at EOF
	done  chan struct{}
}

func startProc(t *testing.T, dir, mode string, extra ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, repoEnv+"="+dir), extra...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: in, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p
}

// TestStress runs 16 reapers (a pass on every monitor event), 16 monitors and 4 mergers in separate
// processes over the same jobs at once, SIGKILLs monitors at random as
// they start jobs (seeded), recovers, and checks the invariants, plus: no
// job of a monitor that was not killed was ended by the reaper.
func TestStress(t *testing.T) {
	jobs := *stressJobs
	if jobs <= 0 {
		jobs = 60
		if raceBuild {
			jobs = 24
		}
	}
	tasks := jobs / 2
	deadline := time.Now().Add(10 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Before(deadline) {
		deadline = d.Add(-10 * time.Second)
	}
	repo, env := newWorld(t, stressToml)
	// Passes start adopters (the CLI, run --adopt) for jobs whose monitor
	// was killed while their command lived, as reap, watch and hooks do.
	cli := cliBinary(t)
	env.Adopter = env.StartAdopter(cli, env.MonitorArgs()...)
	oldMain := repo.Git(repo.Dir, "rev-parse", "main")
	var branches []string
	for i := 0; i < tasks; i++ {
		br := fmt.Sprintf("stress/t%03d", i)
		branches = append(branches, br)
		if _, _, err := env.Enqueue(pipeline.Request{Task: br, Branch: br, Stage: "build"}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	rng := rand.New(rand.NewSource(*stressSeed))

	// Reapers make a pass per monitor event until their stdin closes.
	var reapers []*proc
	for i := 0; i < stressReapers; i++ {
		reapers = append(reapers, startProc(t, repo.Dir, "reaploop", cliEnv+"="+cli))
	}
	// Mergers merge every branch once, each in its own order.
	var mergers []*exec.Cmd
	var mergeOut []*strings.Builder
	for i := 0; i < stressMergers; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=mergeloop", repoEnv+"="+repo.Dir, fmt.Sprintf("%s=%d", seedEnv, rng.Int63()))
		cmd.Stdin = strings.NewReader(strings.Join(branches, "\n"))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		mergers = append(mergers, cmd)
		mergeOut = append(mergeOut, &out)
	}
	t.Cleanup(func() {
		for _, r := range reapers {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
		for _, m := range mergers {
			m.Process.Kill()
			m.Wait()
		}
	})

	// Monitors: up to 16 at once, replaced while queued jobs remain. Each
	// says "run ID" as it starts a job; the controller may kill it there.
	type event struct {
		p    *exec.Cmd
		line string // "" when the monitor ended
	}
	events := make(chan event)
	killed := map[int]bool{}
	pending := map[*exec.Cmd]bool{}
	live := map[*exec.Cmd]bool{}
	spawned, kills := 0, 0
	var wg sync.WaitGroup
	spawn := func() {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=monitorloop", repoEnv+"="+repo.Dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		live[cmd] = true
		spawned++
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				events <- event{cmd, sc.Text()}
			}
			cmd.Wait()
			events <- event{cmd, ""}
		}()
	}
	queuedOrRunning := func() (queued, running int) {
		l, err := env.Store.Active()
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range l.Jobs {
			if j.Status == gitstate.Queued {
				queued++
			} else {
				running++
			}
		}
		return
	}
	for i := 0; i < stressMonitors; i++ {
		spawn()
	}
	inProcessPasses := 0
	for {
		if time.Now().After(deadline) {
			t.Fatalf("stress did not settle in time: %d monitors live", len(live))
		}
		if len(live) == 0 {
			q, r := queuedOrRunning()
			if q == 0 && r == 0 {
				break
			}
			if q == 0 {
				// Only jobs of killed monitors are left: a pass of our own
				// (the reaper loops are at it too).
				if _, err := reaper.RunOnce(context.Background(), env, passOptions(env)); err != nil {
					t.Fatal(err)
				}
				inProcessPasses++
				continue
			}
			for i := 0; i < min(q, stressMonitors); i++ {
				spawn()
			}
			continue
		}
		ev := <-events
		for _, r := range reapers {
			io.WriteString(r.stdin, "go\n")
		}
		if ev.line == "" {
			delete(live, ev.p)
			if q, _ := queuedOrRunning(); q > 0 && len(live) < stressMonitors {
				spawn()
			}
			continue
		}
		// A kill chosen now lands at once (around the claim) or, half the
		// time, at the next event of any monitor (somewhere later in the
		// job: its command, finalize, or a merge).
		for p := range pending {
			if live[p] && p.Process.Signal(syscall.SIGKILL) == nil {
				killed[p.Process.Pid] = true
				kills++
			}
			delete(pending, p)
		}
		if strings.HasPrefix(ev.line, "run ") && rng.Intn(100) < killPercent {
			if rng.Intn(2) == 0 {
				pending[ev.p] = true
			} else if ev.p.Process.Signal(syscall.SIGKILL) == nil {
				killed[ev.p.Process.Pid] = true
				kills++
			}
		}
	}
	wg.Wait()
	for _, m := range mergers {
		if err := m.Wait(); err != nil {
			t.Errorf("merger: %v", err)
		}
	}
	reaperPasses := 0
	for _, r := range reapers {
		r.stdin.Close()
	}
	for _, r := range reapers {
		for line := range r.lines {
			var n, e int
			if _, err := fmt.Sscanf(line, "passes %d errors %d", &n, &e); err == nil {
				reaperPasses += n
			}
		}
		r.cmd.Wait()
	}
	for _, e := range recoverPasses(t, env) {
		t.Error(e)
	}
	elapsed := time.Since(start)

	// Invariants.
	all, err := env.Store.All()
	if err != nil {
		t.Fatal(err)
	}
	var merges []mergeCheck
	count, reasons := map[string]int{}, map[string]int{}
	// A job lost with no command started (its monitor killed before the
	// command's gate opened: nothing ran, so nothing is lost but the
	// attempt) or with its command killed (this test kills none) is
	// rightly lost; one whose command was started and only the monitor
	// killed must have been adopted, never lost.
	lostNoCommand, lostMonitorOnly := 0, 0
	for _, j := range all.Jobs {
		count[string(j.Status)+" by "+j.EndedBy]++
		if j.Status == gitstate.Failed && j.Reason == pipeline.LostReason {
			if j.Command.IsZero() {
				lostNoCommand++
			} else {
				lostMonitorOnly++
				t.Errorf("job %s ended lost though only its monitor was killed (command pid %d was started); log:\n%s", j.ID, j.Command.PID, readLog(env, j.ID))
			}
		}
		if j.Status == gitstate.Failed {
			reasons[j.Stage+": "+firstLine(j.Reason)]++
		}
		if !j.Status.Terminal() {
			t.Errorf("job %s is %s after the stress and recovery", j.ID, j.Status)
		}
		if strings.HasPrefix(j.EndedBy, "reaper") && !killed[j.Monitor.PID] {
			t.Errorf("job %s ended by %s (%s) though its monitor pid %d was never killed", j.ID, j.EndedBy, j.Reason, j.Monitor.PID)
		}
		if j.Stage == "merge" && j.Status == gitstate.Done {
			merges = append(merges, mergeCheck{branch: j.Branch, merged: true})
		}
	}
	for _, br := range branches {
		found := false
		for _, m := range merges {
			found = found || m.branch == br
		}
		if !found {
			merges = append(merges, mergeCheck{branch: br})
		}
	}
	rep := checkInvariants(repo, env, oldMain, merges)
	for _, v := range rep.violations {
		t.Errorf("violation: %s", v)
	}
	mergerResults := map[string]int{}
	for _, out := range mergeOut {
		for _, l := range strings.Split(out.String(), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "ok" {
				mergerResults[f[2]]++
			} else if len(f) > 0 && f[0] == "skip" {
				mergerResults["skipped"]++
			}
		}
	}
	t.Logf("stress: %d jobs (%d tasks), seed %d, %s: %d monitors spawned, %d SIGKILLed, %d reaper passes in %d loops (+%d in-process), %d violations, %d log gaps",
		len(all.Jobs), tasks, *stressSeed, elapsed.Round(time.Millisecond), spawned, kills, reaperPasses, stressReapers, inProcessPasses, len(rep.violations), rep.logGaps)
	t.Logf("stress: jobs by outcome %v; mergers' results %v", count, mergerResults)
	t.Logf("stress: ended lost: %d with no command started or the command killed, %d with only the monitor killed (must be 0)", lostNoCommand, lostMonitorOnly)
	for r, n := range reasons {
		t.Logf("stress: failed %dx: %s", n, r)
	}
}

func readLog(env *pipeline.Env, id string) string {
	b, _ := os.ReadFile(env.Store.LogPath(id))
	return string(b)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}
