package remotejob_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

func expire(t testing.TB, m *machine) []remotejob.Expiry {
	t.Helper()
	syncQ(t, m)
	return must(m.q.Expire(context.Background()))(t)
}

// TestExpireSkewedRunnerClocks: the runner's wall clock, far ahead or far
// behind, does not change when its job expires: only the observer's boot
// clock since it first saw the version counts.
func TestExpireSkewedRunnerClocks(t *testing.T) {
	for _, skew := range []time.Duration{-72 * time.Hour, 0, 72 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			ctx := context.Background()
			r := refstoretest.NewRemote(t)
			run := newMachine(t, r.FileURL(), "runner")
			run.q.Now = func() time.Time { return time.Now().Add(skew) }
			obs := newMachine(t, r.FileURL(), "observer")
			clock := &fakeBoot{boot: "b1", now: 1000 * time.Hour}
			remotejob.SetBootClock(obs.q, clock.read)
			obs.q.TTL = 10 * time.Second
			id := gitstate.JobID("skew", "build", 1)
			must(run.q.Enqueue(ctx, job("skew", "build", 1)))(t)
			c := must(run.q.Claim(ctx, id))(t)
			if err := run.q.Beat(ctx, c, "command"); err != nil {
				t.Fatal(err)
			}
			if xs := expire(t, obs); len(xs) != 0 {
				t.Fatalf("first look: %+v", xs)
			}
			clock.advance(obs.q.TTL - time.Millisecond)
			if xs := expire(t, obs); len(xs) != 0 {
				t.Fatalf("just before the TTL: %+v", xs)
			}
			clock.advance(time.Millisecond)
			xs := expire(t, obs)
			if len(xs) != 1 || !xs[0].Won || xs[0].Host != "runner" || xs[0].Unchanged != obs.q.TTL {
				t.Fatalf("at the TTL: %+v", xs)
			}
			e := get(t, run, id)
			want := "heartbeat expired: no beat from runner for 10s (seen by observer)"
			if e.Job.Status != gitstate.Failed || e.Job.Reason != want || e.Job.EndedBy != "reaper:heartbeat@observer" {
				t.Fatalf("expired job: %s %q by %s", e.Job.Status, e.Job.Reason, e.Job.EndedBy)
			}
			if err := run.q.Beat(ctx, c, ""); !errors.Is(err, remotejob.ErrLost) {
				t.Fatalf("beat after expiry: %v", err)
			}
			checkInvariants(t, r)
		})
	}
}

// TestExpireBeatingJobNeverExpires: a runner that beats faster than the
// TTL is never expired, however long it runs; one that stops is, a TTL
// after the observer saw its last beat; a new boot of the observer starts
// its wait over.
func TestExpireBeatingJobNeverExpires(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	run := newMachine(t, r.FileURL(), "runner")
	obs := newMachine(t, r.FileURL(), "observer")
	clock := &fakeBoot{boot: "b1", now: time.Hour}
	remotejob.SetBootClock(obs.q, clock.read)
	obs.q.TTL = 3 * time.Second
	id := gitstate.JobID("beat", "build", 1)
	must(run.q.Enqueue(ctx, job("beat", "build", 1)))(t)
	c := must(run.q.Claim(ctx, id))(t)
	for i := range 8 {
		if xs := expire(t, obs); len(xs) != 0 {
			t.Fatalf("round %d: a beating job expired: %+v", i, xs)
		}
		clock.advance(obs.q.TTL - time.Second)
		if err := run.q.Beat(ctx, c, "command"); err != nil {
			t.Fatal(err)
		}
	}
	// The runner stops beating. The observer sees the last beat now.
	expire(t, obs)
	clock.advance(obs.q.TTL - time.Second)
	clock.reboot("b2") // a new boot: what was seen before does not count
	if xs := expire(t, obs); len(xs) != 0 {
		t.Fatalf("first look after a reboot: %+v", xs)
	}
	clock.advance(obs.q.TTL - time.Second)
	if xs := expire(t, obs); len(xs) != 0 {
		t.Fatalf("before the TTL on the new boot: %+v", xs)
	}
	clock.advance(time.Second)
	if xs := expire(t, obs); len(xs) != 1 || !xs[0].Won {
		t.Fatalf("a TTL after the last beat on the new boot: %+v", xs)
	}
	checkInvariants(t, r)
}

// TestExpireFirstLook: an observer that has never seen a job does not
// expire it on its first look, however old its last beat (by the wall
// clocks written in it), and a second observer that has just come along
// does not either when the first expires it.
func TestExpireFirstLook(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	run := newMachine(t, r.FileURL(), "runner")
	run.q.Now = func() time.Time { return time.Now().Add(-365 * 24 * time.Hour) }
	id := gitstate.JobID("first", "build", 1)
	must(run.q.Enqueue(ctx, job("first", "build", 1)))(t)
	must(run.q.Claim(ctx, id))(t)
	a := newMachine(t, r.FileURL(), "a")
	ca := &fakeBoot{boot: "ba", now: 5000 * time.Hour}
	remotejob.SetBootClock(a.q, ca.read)
	a.q.TTL = time.Second
	if xs := expire(t, a); len(xs) != 0 {
		t.Fatalf("first look: %+v", xs)
	}
	b := newMachine(t, r.FileURL(), "b")
	cb := &fakeBoot{boot: "bb", now: time.Second}
	remotejob.SetBootClock(b.q, cb.read)
	b.q.TTL = time.Second
	ca.advance(time.Second)
	xs := expire(t, a)
	if len(xs) != 1 || !xs[0].Won {
		t.Fatalf("a's second look a TTL later: %+v", xs)
	}
	if xs := expire(t, b); len(xs) != 0 {
		t.Fatalf("b's first look (the job is failed now): %+v", xs)
	}
}

// TestExpireUndecodable: a record that does not decode is reported on
// every pass, never deleted or rewritten, and the pass still expires the
// others.
func TestExpireUndecodable(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	run := newMachine(t, r.FileURL(), "runner")
	obs := newMachine(t, r.FileURL(), "observer")
	clock := &fakeBoot{boot: "b1", now: time.Hour}
	remotejob.SetBootClock(obs.q, clock.read)
	obs.q.TTL = time.Second
	// Garbage sorting both before and after the good job.
	for _, name := range []string{"jobs/aaa", "jobs/zzz"} {
		v, err := run.q.Store.Prepare(ctx, name, []byte("status = \"running\"\n[[[not toml"), "")
		if err != nil {
			t.Fatal(err)
		}
		if err := run.q.Store.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + name, New: v}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// And a record commit without its file at all.
	empty := commitOn(t, run.dir, "no record.toml")
	if err := run.q.Store.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "jobs/mmm", New: empty}}, refstore.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	id := gitstate.JobID("good", "build", 1)
	must(run.q.Enqueue(ctx, job("good", "build", 1)))(t)
	must(run.q.Claim(ctx, id))(t)
	before := refstoretest.Git(t, r.Dir, "for-each-ref", "refs/orch/jobs/aaa", "refs/orch/jobs/mmm", "refs/orch/jobs/zzz")
	bad := func(xs []remotejob.Expiry) int {
		n := 0
		for _, x := range xs {
			if x.Err != nil {
				var ue *gitstate.UnreadableError
				if !errors.As(x.Err, &ue) || !strings.Contains(x.Err.Error(), "git show") {
					t.Errorf("undecodable %s reported as %v", x.ID, x.Err)
				}
				n++
			}
		}
		return n
	}
	if xs := expire(t, obs); bad(xs) != 3 || len(xs) != 3 {
		t.Fatalf("first pass: %+v", xs)
	}
	clock.advance(time.Second)
	xs := expire(t, obs)
	won := 0
	for _, x := range xs {
		if x.ID == id && x.Won {
			won++
		}
	}
	if bad(xs) != 3 || won != 1 || len(xs) != 4 {
		t.Fatalf("second pass: %+v", xs)
	}
	list := must(obs.q.List(ctx))(t)
	if len(list) != 4 || list[0].Job == nil || list[0].Job.ID != id || list[1].Err == nil || list[2].Err == nil || list[3].Err == nil ||
		!strings.Contains(list[2].Err.Error(), "has no record.toml") {
		t.Fatalf("List: %+v", list)
	}
	if after := refstoretest.Git(t, r.Dir, "for-each-ref", "refs/orch/jobs/aaa", "refs/orch/jobs/mmm", "refs/orch/jobs/zzz"); after != before {
		t.Fatalf("undecodable records changed:\n%s\n%s", before, after)
	}
	checkInvariants(t, r)
}

// TestExpireRealClock: on the machine's own boot clock, with a tiny TTL, a
// job left alone expires within a bounded number of passes, and never
// before the TTL has passed on this machine.
func TestExpireRealClock(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	run := newMachine(t, r.FileURL(), "runner")
	obs := newMachine(t, r.FileURL(), "observer")
	obs.q.TTL = 150 * time.Millisecond
	id := gitstate.JobID("real", "build", 1)
	must(run.q.Enqueue(ctx, job("real", "build", 1)))(t)
	must(run.q.Claim(ctx, id))(t)
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		xs := expire(t, obs)
		if len(xs) == 1 && xs[0].Won {
			if el := time.Since(start); el < obs.q.TTL || xs[0].Unchanged < obs.q.TTL {
				t.Fatalf("expired after %s (unchanged %s), TTL %s", el, xs[0].Unchanged, obs.q.TTL)
			}
			break
		}
		if len(xs) != 0 || time.Now().After(deadline) {
			t.Fatalf("passes until %s: %+v", time.Since(start), xs)
		}
	}
	if e := get(t, run, id); e.Job.Status != gitstate.Failed {
		t.Fatalf("after expiry: %s", e.Job.Status)
	}
}
