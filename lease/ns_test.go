package lease_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid/procidtest"
)

// A lease taken inside another pid namespace (its owner's pid, 1 there, is
// another process here) cannot be judged by liveness from here: only its
// TTL frees it.
func TestOwnerInOtherPidNamespaceIsNotDead(t *testing.T) {
	m, clk, _ := newManager(t)
	inside := procidtest.NamespaceInit(t)
	l := mustAcquire(t, m, "main", lease.Request{Holder: "container", Owner: inside, TTL: time.Minute})
	got := mustGet(t, m, "main")
	if got == nil || got.Owner != inside {
		t.Fatalf("lease record owner %+v, want %+v (pid_ns kept on disk)", got, inside)
	}
	if stale, why := lease.Stale(got, clk.Now()); stale {
		t.Fatalf("lease of a live process of another pid namespace stale: %s", why)
	}
	if rec, errs := m.ReclaimStale(context.Background(), false); len(rec) != 0 || len(errs) != 0 {
		t.Fatalf("reclaimed %v (%v) inside the TTL", rec, errs)
	}
	clk.Advance(time.Minute + time.Millisecond)
	stale, why := lease.Stale(l, clk.Now())
	if !stale || !strings.Contains(why, "ttl") {
		t.Fatalf("expired lease of another pid namespace's process: stale %v (%s); want stale by ttl", stale, why)
	}
	if rec, errs := m.ReclaimStale(context.Background(), false); len(rec) != 1 || len(errs) != 0 {
		t.Fatalf("past the TTL: reclaimed %v (%v); want the lease", rec, errs)
	}
}
