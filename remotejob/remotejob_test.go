package remotejob_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
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

func syncQ(t testing.TB, m *machine) {
	t.Helper()
	if err := m.q.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
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

// transports runs f over file:// and over smart HTTP on loopback.
func transports(t *testing.T, f func(t *testing.T, r *refstoretest.Remote, url string)) {
	t.Run("file", func(t *testing.T) {
		r := refstoretest.NewRemote(t)
		f(t, r, r.FileURL())
	})
	t.Run("http", func(t *testing.T) {
		r := refstoretest.NewRemote(t)
		f(t, r, r.Serve(t).URL)
	})
}

// TestClaimRace: N machines claim one queued job at once; exactly one
// wins, the others learn ErrTaken, and the remote's record went queued ->
// running once.
func TestClaimRace(t *testing.T) {
	transports(t, func(t *testing.T, r *refstoretest.Remote, url string) {
		ctx := context.Background()
		const n = 5
		ms := make([]*machine, n)
		for i := range ms {
			ms[i] = newMachine(t, url, fmt.Sprintf("host%d", i))
		}
		id := gitstate.JobID("race", "build", 1)
		must(ms[0].q.Enqueue(ctx, job("race", "build", 1)))(t)
		for _, m := range ms {
			if err := m.q.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
		start := make(chan struct{})
		type result struct {
			c   *remotejob.Claimed
			err error
		}
		res := make(chan result, n)
		for _, m := range ms {
			go func() {
				<-start
				c, err := m.q.Claim(ctx, id)
				res <- result{c, err}
			}()
		}
		close(start)
		var won []*remotejob.Claimed
		for range n {
			r := <-res
			switch {
			case r.err == nil:
				won = append(won, r.c)
			case !errors.Is(r.err, remotejob.ErrTaken):
				t.Errorf("a losing claim: %v, want ErrTaken", r.err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("%d claims won, want 1", len(won))
		}
		e := get(t, ms[0], id)
		if e.VersionID != won[0].VersionID || e.Job.Run != won[0].Run || e.Job.Host != won[0].Host {
			t.Fatalf("remote has %+v (%s), winner %+v (%s)", e.Job, e.VersionID, won[0].Job, won[0].VersionID)
		}
		checkInvariants(t, r)
	})
}

// TestLostRunnerWritesNothing: once a job is cancelled or expired, its
// runner's Beat and Settle are ErrLost and change nothing on the remote.
func TestLostRunnerWritesNothing(t *testing.T) {
	for _, how := range []string{"cancel", "expire"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			r := refstoretest.NewRemote(t)
			run := newMachine(t, r.FileURL(), "runner")
			obs := newMachine(t, r.FileURL(), "observer")
			clock := &fakeBoot{boot: "b1"}
			remotejob.SetBootClock(obs.q, clock.read)
			obs.q.TTL = time.Minute
			id := gitstate.JobID("lost", "build", 1)
			must(run.q.Enqueue(ctx, job("lost", "build", 1)))(t)
			c := must(run.q.Claim(ctx, id))(t)
			switch how {
			case "cancel":
				if _, won, err := obs.q.Cancel(ctx, id, "stop it"); err != nil || !won {
					t.Fatalf("cancel: won %v, %v", won, err)
				}
			case "expire":
				expireOnce(t, obs, clock, id)
			}
			before := remoteRefs(t, r)
			if err := run.q.Beat(ctx, c, "command"); !errors.Is(err, remotejob.ErrLost) {
				t.Fatalf("beat after %s: %v, want ErrLost", how, err)
			}
			next := job("lost", "review", 1)
			head := commitOn(t, run.dir, "work")
			err := run.q.Settle(ctx, c, remotejob.Ending{Status: gitstate.Done, Next: &next,
				Extra: []refstore.Update{{Ref: "refs/heads/orch/lost", New: head}}})
			if !errors.Is(err, remotejob.ErrLost) {
				t.Fatalf("settle after %s: %v, want ErrLost", how, err)
			}
			if after := remoteRefs(t, r); after != before {
				t.Fatalf("the lost runner changed the remote:\nbefore %s\nafter  %s", before, after)
			}
			checkInvariants(t, r)
		})
	}
}

// expireOnce has obs see job id, then again a TTL later on its boot clock,
// and checks that the second look expired it.
func expireOnce(t testing.TB, obs *machine, clock *fakeBoot, id string) {
	t.Helper()
	ctx := context.Background()
	syncQ(t, obs)
	if xs := must(obs.q.Expire(ctx))(t); len(xs) != 0 {
		t.Fatalf("first look expired: %+v", xs)
	}
	clock.advance(obs.q.TTL)
	syncQ(t, obs)
	xs := must(obs.q.Expire(ctx))(t)
	if len(xs) != 1 || xs[0].ID != id || !xs[0].Won || xs[0].Err != nil {
		t.Fatalf("expire after the TTL: %+v", xs)
	}
}

// fakeBoot is an observer's boot clock under the test's control.
type fakeBoot struct {
	mu   sync.Mutex
	now  time.Duration
	boot string
}

func (f *fakeBoot) read() (time.Duration, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now, f.boot, nil
}

func (f *fakeBoot) advance(d time.Duration) {
	f.mu.Lock()
	f.now += d
	f.mu.Unlock()
}

// reboot starts a new boot whose clock happens to read later than the
// old one's: only the boot id tells that the readings do not compare.
func (f *fakeBoot) reboot(id string) {
	f.mu.Lock()
	f.boot, f.now = id, f.now+time.Hour
	f.mu.Unlock()
}

// TestSettle: Next and Extra land with the terminal flip or not at all; a
// second Settle converges without a second next job; a Settle expecting
// an older version of its own run retries.
func TestSettle(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	m := newMachine(t, r.FileURL(), "runner")
	other := newMachine(t, r.FileURL(), "other")
	id := gitstate.JobID("s", "build", 1)
	nextID := gitstate.JobID("s", "review", 1)
	must(m.q.Enqueue(ctx, job("s", "build", 1)))(t)
	c := must(m.q.Claim(ctx, id))(t)
	stale := *c // the runner's view before its own next beat
	if err := m.q.Beat(ctx, c, "command"); err != nil {
		t.Fatal(err)
	}

	// The branch moved on the remote: nothing of the settle lands.
	moved := commitOn(t, other.dir, "someone else's")
	refstoretest.Git(t, other.dir, "push", "-q", r.FileURL(), moved+":refs/heads/orch/s")
	head := commitOn(t, m.dir, "work")
	next := job("s", "review", 1)
	before := remoteRefs(t, r)
	end := remotejob.Ending{Status: gitstate.Done, Reason: "ok", Next: &next,
		Extra: []refstore.Update{{Ref: "refs/heads/orch/s", Old: "", New: head}}}
	err := m.q.Settle(ctx, &stale, end)
	if !errors.Is(err, refstore.ErrConflict) || errors.Is(err, remotejob.ErrLost) {
		t.Fatalf("settle over a moved branch: %v, want a conflict (not lost)", err)
	}
	if after := remoteRefs(t, r); after != before {
		t.Fatalf("a failed settle changed the remote:\nbefore %s\nafter  %s", before, after)
	}
	if e := get(t, m, id); e.Job.Status != gitstate.Running || e.VersionID != stale.VersionID {
		t.Fatalf("after the failed settle: %+v", e.Job)
	}

	// Expecting the branch as it is now: it lands, from the stale view
	// (an older version of its own run: retried on the current one).
	end.Extra[0].Old = moved
	if err := m.q.Settle(ctx, &stale, end); err != nil {
		t.Fatal(err)
	}
	e := get(t, other, id)
	if e.Job.Status != gitstate.Done || e.Job.Beats != 1 || e.Job.Next != nextID {
		t.Fatalf("settled: %+v", e.Job)
	}
	if got := refstoretest.Git(t, r.Dir, "rev-parse", "refs/heads/orch/s"); got != head {
		t.Fatalf("branch %s, want %s", got, head)
	}
	// Again, from the same view and from the older one: converges.
	if err := m.q.Settle(ctx, &stale, end); err != nil {
		t.Fatalf("second settle: %v", err)
	}
	if err := m.q.Settle(ctx, c, end); err != nil {
		t.Fatalf("settle from the pre-settle view: %v", err)
	}
	if c.Status != gitstate.Done {
		t.Fatalf("the runner's view after converging: %s", c.Status)
	}
	// A different ending is not this run's settle: lost.
	if err := m.q.Settle(ctx, c, remotejob.Ending{Status: gitstate.Failed, Next: &next}); !errors.Is(err, remotejob.ErrLost) {
		t.Fatalf("settle with another ending: %v, want ErrLost", err)
	}
	if n := refstoretest.Git(t, r.Dir, "rev-list", "--count", "refs/orch/jobs/"+nextID); n != "1" {
		t.Fatalf("next job has %s versions, want 1", n)
	}
	checkInvariants(t, r)
}
