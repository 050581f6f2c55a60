package remotejob_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	cleanup, err := refstoretest.SetupEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// machine is one host sharing the remote: its own repository, state dir
// and host name.
type machine struct {
	dir string
	q   *remotejob.Queue
}

func newMachine(t testing.TB, url, host string) *machine {
	t.Helper()
	dir := refstoretest.NewMachine(t)
	s, err := refstore.Open(dir, url)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "orch")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	return &machine{dir: dir, q: remotejob.New(s, host, state)}
}

func job(task, stage string, attempt int) remotejob.Job {
	return remotejob.Job{Task: task, Stage: stage, Attempt: attempt, Branch: "orch/" + task, Target: "main"}
}

// must(f())(t) is f's value, failing t on f's error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func get(t testing.TB, m *machine, id string) remotejob.Entry {
	t.Helper()
	ctx := context.Background()
	if err := m.q.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return must(m.q.Get(ctx, id))(t)
}

// remoteRefs is every ref of the bare remote with its id: what "nothing
// landed" compares.
func remoteRefs(t testing.TB, r *refstoretest.Remote) string {
	t.Helper()
	out, _ := refstoretest.TryGit(r.Dir, "for-each-ref", "--format=%(objectname) %(refname)")
	return out
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	a := newMachine(t, r.FileURL(), "hostA")
	b := newMachine(t, r.FileURL(), "hostB")

	j := job("t1", "build", 1)
	// Any bytes round-trip (the project's text escaping).
	j.Target = "main\x00\xff\n\"x\""
	if created := must(a.q.Enqueue(ctx, j))(t); !created {
		t.Fatal("first enqueue: not created")
	}
	if created := must(b.q.Enqueue(ctx, j))(t); created {
		t.Fatal("second enqueue of the same id: created")
	}
	id := gitstate.JobID("t1", "build", 1)
	e := get(t, b, id)
	if e.Job.Status != gitstate.Queued || e.Job.Target != j.Target || e.Job.ID != id {
		t.Fatalf("enqueued job reads back as %+v", e.Job)
	}
	if _, err := a.q.Get(ctx, "nosuch.1"); !errors.Is(err, remotejob.ErrNotFound) {
		t.Fatalf("Get of an absent job: %v", err)
	}

	c := must(b.q.Claim(ctx, id))(t)
	if c.Host != "hostB" || c.Run == "" || c.Status != gitstate.Running {
		t.Fatalf("claimed: %+v", c.Job)
	}
	if _, err := a.q.Claim(ctx, id); !errors.Is(err, remotejob.ErrTaken) {
		t.Fatalf("second claim: %v, want ErrTaken", err)
	}
	if err := b.q.Beat(ctx, c, "command"); err != nil {
		t.Fatal(err)
	}
	if e := get(t, a, id); e.Job.Beats != 1 || e.Job.Progress != "command" || e.VersionID != c.VersionID {
		t.Fatalf("after a beat: %+v (version %s, runner's %s)", e.Job, e.VersionID, c.VersionID)
	}

	// Settle: done, the next stage queued and the branch pushed, together.
	head := commitOn(t, b.dir, "work")
	code := 0
	next := job("t1", "review", 1)
	err := b.q.Settle(ctx, c, remotejob.Ending{Status: gitstate.Done, Reason: "gates passed", ExitCode: &code,
		Next: &next, Extra: []refstore.Update{{Ref: "refs/heads/orch/t1", New: head}}})
	if err != nil {
		t.Fatal(err)
	}
	nextID := gitstate.JobID("t1", "review", 1)
	e = get(t, a, id)
	if e.Job.Status != gitstate.Done || e.Job.Next != nextID || e.Job.EndedBy != "monitor@hostB" || *e.Job.ExitCode != 0 {
		t.Fatalf("settled: %+v", e.Job)
	}
	if n := get(t, a, nextID); n.Job.Status != gitstate.Queued || n.Job.Stage != "review" {
		t.Fatalf("next job: %+v", n.Job)
	}
	if got := refstoretest.Git(t, r.Dir, "rev-parse", "refs/heads/orch/t1"); got != head {
		t.Fatalf("branch on the remote %s, want %s", got, head)
	}
	list := must(a.q.List(ctx))(t)
	if len(list) != 2 || list[0].Job.ID != id || list[1].Job.ID != nextID {
		t.Fatalf("List: %+v", list)
	}
	// Terminal never changes.
	if _, won, err := a.q.Cancel(ctx, id, "late"); err != nil || won {
		t.Fatalf("cancel of a done job: won %v, %v", won, err)
	}
}

// commitOn makes a commit in the machine's repository and returns its id.
func commitOn(t testing.TB, dir, msg string) string {
	t.Helper()
	tree := refstoretest.Git(t, dir, "mktree")
	cmd := []string{"-c", "user.name=t", "-c", "user.email=t@t", "commit-tree", tree, "-m", msg}
	return refstoretest.Git(t, dir, cmd...)
}

var _ = strings.Contains
var _ = time.Second
