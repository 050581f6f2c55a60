package remotejob_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// TestPartition: a runner cut off from the remote gets errors wrapping
// refstore.ErrUnreachable from Claim, Beat and Settle, and nothing it
// tried half-lands; once the partition heals, its writes land, and a
// settle that a cancel on the other side overtook is ErrLost.
func TestPartition(t *testing.T) {
	ctx := context.Background()
	r := refstoretest.NewRemote(t)
	srv := r.Serve(t)
	m := newMachine(t, srv.URL, "cut")
	// Another machine on the far side of the partition (not cut off).
	far := newMachine(t, r.FileURL(), "far")
	id := gitstate.JobID("p", "build", 1)
	must(m.q.Enqueue(ctx, job("p", "build", 1)))(t)
	syncQ(t, m)

	unreachable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, refstore.ErrUnreachable) {
			t.Fatalf("%s under a partition: %v, want ErrUnreachable", what, err)
		}
	}
	srv.Partition(true)
	_, err := m.q.Claim(ctx, id)
	unreachable("claim", err)
	unreachable("sync", m.q.Sync(ctx))
	srv.Partition(false)
	if e := get(t, far, id); e.Job.Status != gitstate.Queued {
		t.Fatalf("after a claim under a partition: %s", e.Job.Status)
	}
	c := must(m.q.Claim(ctx, id))(t)

	srv.Partition(true)
	unreachable("beat", m.q.Beat(ctx, c, "command"))
	srv.Partition(false)
	if err := m.q.Beat(ctx, c, "command"); err != nil {
		t.Fatalf("beat after healing: %v", err)
	}

	next := job("p", "review", 1)
	end := remotejob.Ending{Status: gitstate.Done, Next: &next,
		Extra: []refstore.Update{{Ref: "refs/heads/orch/p", New: commitOn(t, m.dir, "work")}}}
	srv.Partition(true)
	before := remoteRefs(t, r)
	unreachable("settle", m.q.Settle(ctx, c, end))
	if after := remoteRefs(t, r); after != before {
		t.Fatalf("a settle under a partition changed the remote:\n%s\n%s", before, after)
	}
	srv.Partition(false)
	if err := m.q.Settle(ctx, c, end); err != nil {
		t.Fatalf("settle after healing: %v", err)
	}
	h := checkInvariants(t, r)
	if vs := h[id]; vs[len(vs)-1].Status != gitstate.Done || len(h[gitstate.JobID("p", "review", 1)]) != 1 {
		t.Fatalf("converged to %+v", h)
	}

	// A cancel lands on the far side while the runner is cut off: after
	// the heal the runner's settle is lost and lands nothing.
	id2 := gitstate.JobID("p2", "build", 1)
	must(m.q.Enqueue(ctx, job("p2", "build", 1)))(t)
	c2 := must(m.q.Claim(ctx, id2))(t)
	srv.Partition(true)
	unreachable("beat", m.q.Beat(ctx, c2, ""))
	if _, won, err := far.q.Cancel(ctx, id2, "stop"); err != nil || !won {
		t.Fatalf("far cancel: %v %v", won, err)
	}
	srv.Partition(false)
	before = remoteRefs(t, r)
	next2 := job("p2", "review", 1)
	if err := m.q.Settle(ctx, c2, remotejob.Ending{Status: gitstate.Done, Next: &next2}); !errors.Is(err, remotejob.ErrLost) {
		t.Fatalf("settle after a cancel during the partition: %v, want ErrLost", err)
	}
	if after := remoteRefs(t, r); after != before {
		t.Fatalf("a lost settle changed the remote")
	}
	checkInvariants(t, r)
}

// gateHooks makes the remote's pre-receive hook stop every push until the
// test lets it go: the hook says it is in by writing to dir/in, then
// reads its exit code from dir/go; the push is over when dir/done is
// written (by pre-receive when refusing, post-receive when it landed).
func gateHooks(t testing.TB, r *refstoretest.Remote) (dir string) {
	t.Helper()
	dir = t.TempDir()
	for _, f := range []string{"in", "go", "done"} {
		if err := syscall.Mkfifo(filepath.Join(dir, f), 0o600); err != nil {
			t.Skipf("no FIFOs here: %v", err)
		}
	}
	pre := fmt.Sprintf("#!/bin/sh\ncat >/dev/null\necho in >%[1]s/in\nread code <%[1]s/go\nif [ \"$code\" != 0 ]; then echo done >%[1]s/done; fi\nexit \"$code\"\n", dir)
	post := fmt.Sprintf("#!/bin/sh\ncat >/dev/null\necho done >%s/done\n", dir)
	hooks := filepath.Join(r.Dir, "hooks")
	for name, body := range map[string]string{"pre-receive": pre, "post-receive": post} {
		if err := os.WriteFile(filepath.Join(hooks, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func removeHooks(t testing.TB, r *refstoretest.Remote) {
	for _, name := range []string{"pre-receive", "post-receive"} {
		if err := os.Remove(filepath.Join(r.Dir, "hooks", name)); err != nil {
			t.Fatal(err)
		}
	}
}

// fifo reads (or writes) one line through a FIFO: blocks until the other
// end (the hook) opens it.
func fifoRead(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func fifoWrite(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestKilledMidSettle: a runner process killed -9 while its settle push
// is inside the server leaves the whole settle landed or none of it, and
// settling again (as settle repair does, from the last view it recorded)
// converges to one terminal version and one next job.
func TestKilledMidSettle(t *testing.T) {
	for _, land := range []bool{true, false} {
		t.Run(fmt.Sprintf("landed=%v", land), func(t *testing.T) {
			ctx := context.Background()
			r := refstoretest.NewRemote(t)
			m := newMachine(t, r.FileURL(), "runner")
			id := gitstate.JobID("k", "build", 1)
			nextID := gitstate.JobID("k", "review", 1)
			must(m.q.Enqueue(ctx, job("k", "build", 1)))(t)
			c := must(m.q.Claim(ctx, id))(t)
			if err := m.q.Beat(ctx, c, "finalize 1/1"); err != nil {
				t.Fatal(err)
			}
			head := commitOn(t, m.dir, "work")
			next := job("k", "review", 1)
			end := remotejob.Ending{Status: gitstate.Done, Reason: "gates passed", Next: &next,
				Extra: []refstore.Update{{Ref: "refs/heads/orch/k", New: head}}}
			before := remoteRefs(t, r)

			sync := gateHooks(t, r)
			p := testproc.Start(t, append(os.Environ(), helperEnv+"=settle"))
			order, _ := json.Marshal(settleOrder{URL: r.FileURL(), Dir: m.dir, Host: "runner", State: m.q.StateDir, Claimed: *c, End: end})
			if _, err := p.In.Write(append(order, '\n')); err != nil {
				t.Fatal(err)
			}
			if line, err := p.Out.ReadString('\n'); err != nil || line != "settling\n" {
				t.Fatalf("helper said %q, %v", line, err)
			}
			fifoRead(t, filepath.Join(sync, "in")) // its push is in the server's hook
			p.Stop()                               // kill -9 the runner (its handle only)
			code := "1"
			if land {
				code = "0"
			}
			fifoWrite(t, filepath.Join(sync, "go"), code)
			fifoRead(t, filepath.Join(sync, "done"))
			removeHooks(t, r)

			h := checkInvariants(t, r)
			vs := h[id]
			settled := vs[len(vs)-1].Status == gitstate.Done
			_, hasNext := h[nextID]
			branch, _ := refstoretest.TryGit(r.Dir, "rev-parse", "-q", "--verify", "refs/heads/orch/k")
			hasBranch := strings.TrimSpace(branch) == head
			if settled != land || hasNext != land || hasBranch != land {
				t.Fatalf("after the kill (push let through %v): terminal %v, next job %v, branch %v: not all or nothing as the server decided",
					land, settled, hasNext, hasBranch)
			}
			if !land {
				if after := remoteRefs(t, r); after != before {
					t.Fatalf("a refused settle changed the remote")
				}
			}
			// Settle repair: again from the runner's last recorded view.
			if err := m.q.Settle(ctx, c, end); err != nil {
				t.Fatalf("settle again: %v", err)
			}
			h = checkInvariants(t, r)
			vs = h[id]
			if vs[len(vs)-1].Status != gitstate.Done || len(h[nextID]) != 1 {
				t.Fatalf("after settling again: %d versions, last %s; next job versions %d", len(vs), vs[len(vs)-1].Status, len(h[nextID]))
			}
			terminal := 0
			for _, v := range vs {
				if v.Status.Terminal() {
					terminal++
				}
			}
			if terminal != 1 {
				t.Fatalf("%d terminal versions", terminal)
			}
		})
	}
}
