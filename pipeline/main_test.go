package pipeline_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
)

// The test binary doubles as the processes the tests need to run apart from
// the test itself: a monitor that may crash (crash_test.go) and a racing
// finalizer (race_test.go). PIPELINE_TEST_HELPER selects the mode;
// PIPELINE_TEST_REPO is the repository to work in.
const (
	helperEnv = "PIPELINE_TEST_HELPER"
	repoEnv   = "PIPELINE_TEST_REPO"
	jobEnv    = "PIPELINE_TEST_JOB"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "monitor":
		os.Exit(monitorHelper())
	case "finalize":
		os.Exit(finalizeHelper())
	case "sharedmonitor":
		os.Exit(sharedMonitorHelper())
	case "sharedmachine":
		os.Exit(sharedMachineHelper())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// monitorHelper runs job $PIPELINE_TEST_JOB as its monitor. ORCH_CRASHPOINT
// in its environment makes it kill itself on the way.
func monitorHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitor helper:", err)
		return 1
	}
	env.Store.Actor = "monitor"
	res, err := env.Run(context.Background(), os.Getenv(jobEnv), pipeline.RunOptions{Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "monitor helper:", err)
		return 1
	}
	fmt.Println(res.Job.Status)
	return 0
}

// finalizeHelper is one racing finalizer: for each job id read from stdin
// it calls Finalize as the reaper would and prints "won NEXT-ID", "lost" or
// "error MESSAGE".
func finalizeHelper() int {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	env.Store.Actor = "racer"
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		res, err := env.Finalize(context.Background(), in.Text(), pipeline.Ending{EndedBy: gitstate.EndedByReaperExitCode})
		switch {
		case err != nil:
			fmt.Println("error", strings.ReplaceAll(err.Error(), "\n", " "))
		case res.Won:
			next := "-"
			if res.Next != nil {
				next = res.Next.ID
			}
			fmt.Println("won", next)
		default:
			fmt.Println("lost")
		}
	}
	return 0
}

// pipelineToml is a two-stage pipeline: build makes a commit on the task's
// branch, must be ahead of main, has one finalize step, and advances to
// review.
const pipelineToml = `target = "main"

[[stages]]
name = "build"
run = "git commit -q --allow-empty -m built"
gates = ["commits_ahead"]
finalize = ["true"]
next = "review"

[[stages]]
name = "review"
run = "true"
`

// newRepo makes a real repository with an initialised state dir and the
// given orch.toml, and returns it with an Env opened on it in this process.
func newRepo(t *testing.T, orchToml string) (*gittest.Repo, *pipeline.Env) {
	t.Helper()
	return pipelinetest.New(t, orchToml)
}

// helperEnviron is the environment of a helper process: the repository's
// git environment (fixed identity, no ORCH_* from outside) plus extra.
func helperEnviron(repo *gittest.Repo, mode string, extra ...string) []string {
	return append(append(repo.Env(), helperEnv+"="+mode, repoEnv+"="+repo.Dir), extra...)
}

// checkStateOnDisk checks what every reader relies on after any crash: each
// line of the event log parses (no torn line), every record parses, each
// job's history is a path of the state machine from creation that ends in
// its status, and the event log holds, per job, a subsequence of that
// history (a crash may lose a line, never invent one). It returns the
// events.
func checkStateOnDisk(t *testing.T, s *gitstate.Store) []gitstate.Transition {
	t.Helper()
	data, err := os.ReadFile(s.EventsPath())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Errorf("event log ends in a cut line: %q", data[strings.LastIndexByte(string(data[:len(data)-1]), '\n')+1:])
	}
	var lines []string
	if len(data) > 0 {
		lines = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	}
	var events []gitstate.Transition
	for i, line := range lines {
		var ev gitstate.Transition
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Errorf("event log line %d does not parse: %v: %q", i+1, err, line)
			continue
		}
		if ev.Job == "" || !ev.To.Valid() || ev.PID == 0 || ev.At.IsZero() {
			t.Errorf("event log line %d is incomplete: %q", i+1, line)
		}
		events = append(events, ev)
	}
	all, err := s.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range all.Unreadable {
		t.Errorf("unreadable record %s: %v", u.Path, u.Err)
	}
	byJob := map[string][]gitstate.Transition{}
	for _, ev := range events {
		byJob[ev.Job] = append(byJob[ev.Job], ev)
	}
	for _, j := range all.Jobs {
		checkHistory(t, j)
		// The job's events must appear in its history, in order.
		h := j.History
		for _, ev := range byJob[j.ID] {
			for len(h) > 0 && !sameTransition(h[0], ev) {
				h = h[1:]
			}
			if len(h) == 0 {
				t.Errorf("job %s: event %s→%s by pid %d is not in its history %s", j.ID, ev.From, ev.To, ev.PID, pathOf(j.History))
				break
			}
			h = h[1:]
		}
		delete(byJob, j.ID)
	}
	for id := range byJob {
		t.Errorf("event log names job %s, which has no record", id)
	}
	return events
}

func sameTransition(a, b gitstate.Transition) bool {
	return a.From == b.From && a.To == b.To && a.PID == b.PID && a.Actor == b.Actor && a.At.Equal(b.At)
}

// checkHistory checks that j's history is a path of the state machine from
// creation and ends in j's status.
func checkHistory(t *testing.T, j *gitstate.Job) {
	t.Helper()
	if len(j.History) == 0 || j.History[0].From != "" || j.History[0].To != gitstate.Queued {
		t.Errorf("job %s: history %s does not start with the creation (→queued)", j.ID, pathOf(j.History))
		return
	}
	for i := 1; i < len(j.History); i++ {
		prev, cur := j.History[i-1], j.History[i]
		if cur.From != prev.To || !gitstate.CanTransition(cur.From, cur.To) {
			t.Errorf("job %s: history %s: step %d (%s→%s) is not an edge of the state machine after %s",
				j.ID, pathOf(j.History), i, cur.From, cur.To, prev.To)
		}
	}
	if last := j.History[len(j.History)-1]; last.To != j.Status {
		t.Errorf("job %s: status %s, but history %s ends in %s", j.ID, j.Status, pathOf(j.History), last.To)
	}
}

func pathOf(h []gitstate.Transition) string {
	var b strings.Builder
	for i, t := range h {
		if i == 0 {
			fmt.Fprintf(&b, "%s", t.From)
		}
		fmt.Fprintf(&b, "→%s", t.To)
	}
	return b.String()
}

// eventsOf returns the events of job id, as "from>to@pid".
func eventsOf(events []gitstate.Transition, id string) []string {
	var out []string
	for _, ev := range events {
		if ev.Job == id {
			out = append(out, fmt.Sprintf("%s>%s@%d", ev.From, ev.To, ev.PID))
		}
	}
	return out
}

func itoa(n int) string { return strconv.Itoa(n) }
