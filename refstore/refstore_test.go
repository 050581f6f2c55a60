package refstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
)

func TestMain(m *testing.M) {
	cleanup, err := refstoretest.SetupEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// transports runs f once over file:// and once over smart HTTP on
// loopback, each against a fresh remote.
func transports(t *testing.T, f func(t *testing.T, remote *refstoretest.Remote, url string)) {
	t.Run("file", func(t *testing.T) {
		r := refstoretest.NewRemote(t)
		f(t, r, r.FileURL())
	})
	t.Run("http", func(t *testing.T) {
		r := refstoretest.NewRemote(t)
		f(t, r, r.Serve(t).URL)
	})
}

// fileOnly runs f over file:// alone: for what the server's ref
// transaction decides, the same whatever the transport.
func fileOnly(t *testing.T, f func(t *testing.T, remote *refstoretest.Remote, url string)) {
	r := refstoretest.NewRemote(t)
	f(t, r, r.FileURL())
}

func open(t testing.TB, url string) *refstore.Store {
	t.Helper()
	s, err := refstore.Open(refstoretest.NewMachine(t), url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func prepare(t testing.TB, s *refstore.Store, name, data, parent string) string {
	t.Helper()
	id, err := s.Prepare(context.Background(), name, []byte(data), parent)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// remoteRef is what the server itself holds for ref ("" when absent).
func remoteRef(t testing.TB, r *refstoretest.Remote, ref string) string {
	t.Helper()
	out, err := refstoretest.TryGit(r.Dir, "rev-parse", "-q", "--verify", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func TestWriteReadDelete(t *testing.T) {
	t.Parallel()
	transports(t, func(t *testing.T, remote *refstoretest.Remote, url string) {
		ctx := context.Background()
		a, b := open(t, url), open(t, url)
		rec, err := b.Read(ctx, "leases/main")
		if err != nil || rec.ID != "" || rec.Data != nil {
			t.Fatalf("absent record: %+v, %v", rec, err)
		}
		v1 := prepare(t, a, "leases/main", "token = 1\n", "")
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", New: v1}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		// The writer reads its own write without a fetch.
		if rec, err := a.Get(ctx, "leases/main"); err != nil || rec.ID != v1 || string(rec.Data) != "token = 1\n" {
			t.Fatalf("writer's view: %+v, %v", rec, err)
		}
		rec, err = b.Read(ctx, "leases/main")
		if err != nil || rec.ID != v1 || string(rec.Data) != "token = 1\n" {
			t.Fatalf("other machine reads %+v, %v; want %s", rec, err, v1)
		}
		// Creating it again (expecting absence) loses.
		v1b := prepare(t, b, "leases/main", "token = 1\n", "")
		err = b.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", New: v1b}}, refstore.PushOptions{})
		if !errors.Is(err, refstore.ErrConflict) {
			t.Fatalf("create over an existing record: %v, want ErrConflict", err)
		}
		v2 := prepare(t, b, "leases/main", "token = 2\n", v1)
		if err := b.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v1, New: v2}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		// a's view is stale: its write expecting v1 loses and writes nothing.
		v2a := prepare(t, a, "leases/main", "token = 9\n", v1)
		err = a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v1, New: v2a}}, refstore.PushOptions{})
		var re *refstore.RefError
		if !errors.As(err, &re) || !errors.Is(err, refstore.ErrConflict) || errors.Is(err, refstore.ErrRefused) {
			t.Fatalf("stale write: %v, want a *RefError matching ErrConflict only", err)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"leases/main"); got != v2 {
			t.Fatalf("remote holds %s after a lost write, want %s", got, v2)
		}
		if ids, err := a.List(ctx, "leases"); err != nil || ids["leases/main"] != v1 {
			t.Fatalf("a's mirror before its fetch: %v, %v", ids, err)
		}
		if err := a.Fetch(ctx); err != nil {
			t.Fatal(err)
		}
		if ids, err := a.List(ctx, "leases"); err != nil || ids["leases/main"] != v2 || len(ids) != 1 {
			t.Fatalf("a's mirror after its fetch: %v, %v", ids, err)
		}
		// Deletion is a compare-and-swap too.
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v1}}, refstore.PushOptions{}); !errors.Is(err, refstore.ErrConflict) {
			t.Fatalf("stale delete: %v", err)
		}
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v2}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"leases/main"); got != "" {
			t.Fatalf("deleted record still on the remote: %s", got)
		}
		// The fetch prunes the other machine's mirror.
		if rec, err := b.Read(ctx, "leases/main"); err != nil || rec.ID != "" {
			t.Fatalf("after delete b reads %+v, %v", rec, err)
		}
	})
}

// TestCASRace: 16 machines race the same compare-and-swap, a creation
// (expecting no record) over file:// and an update of the version all of
// them read over smart HTTP: exactly one wins, every loser gets
// ErrConflict, and the remote holds the winner's version.
func TestCASRace(t *testing.T) {
	t.Parallel()
	transports(t, func(t *testing.T, remote *refstoretest.Remote, url string) {
		const n = 16
		ctx := context.Background()
		stores := make([]*refstore.Store, n)
		for i := range stores {
			stores[i] = open(t, url)
		}
		old := ""
		if strings.HasPrefix(url, "http") {
			old = prepare(t, stores[0], "jobs/j1", "seed = 1\n", "")
			if err := stores[0].Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "jobs/j1", New: old}}, refstore.PushOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		ids := make([]string, n)
		for i, s := range stores {
			if old != "" {
				if rec, err := s.Read(ctx, "jobs/j1"); err != nil || rec.ID != old {
					t.Fatalf("machine %d reads %+v, %v", i, rec, err)
				}
			}
			ids[i] = prepare(t, s, "jobs/j1", fmt.Sprintf("machine = %d\n", i), old)
		}
		errs := make([]error, n)
		var start, done sync.WaitGroup
		start.Add(1)
		for i, s := range stores {
			done.Add(1)
			go func() {
				defer done.Done()
				start.Wait()
				errs[i] = s.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "jobs/j1", Old: old, New: ids[i]}}, refstore.PushOptions{})
			}()
		}
		start.Done()
		done.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("machines %d and %d both won", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, refstore.ErrConflict):
				t.Fatalf("machine %d: %v, want ErrConflict", i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("nobody won: %v", errs)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"jobs/j1"); got != ids[winner] {
			t.Fatalf("remote holds %s, the winner wrote %s", got, ids[winner])
		}
	})
}

// TestAtomicSeveralRefs: a write of two records where one expectation is
// stale lands neither.
func TestAtomicSeveralRefs(t *testing.T) {
	t.Parallel()
	fileOnly(t, func(t *testing.T, remote *refstoretest.Remote, url string) {
		ctx := context.Background()
		a := open(t, url)
		x1 := prepare(t, a, "x", "x = 1\n", "")
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "x", New: x1}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		x2 := prepare(t, a, "x", "x = 2\n", x1)
		y1 := prepare(t, a, "y", "y = 1\n", "")
		// y is expected to exist at x1: wrong, so x must not move either.
		err := a.Update(ctx, []refstore.Update{
			{Ref: refstore.Prefix + "x", Old: x1, New: x2},
			{Ref: refstore.Prefix + "y", Old: x1, New: y1},
		}, refstore.PushOptions{})
		if !errors.Is(err, refstore.ErrConflict) {
			t.Fatalf("half-stale atomic write: %v", err)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"x"); got != x1 {
			t.Fatalf("x moved to %s in a write that failed", got)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"y"); got != "" {
			t.Fatalf("y created in a write that failed")
		}
		if err := a.Update(ctx, []refstore.Update{
			{Ref: refstore.Prefix + "x", Old: x1, New: x2},
			{Ref: refstore.Prefix + "y", Old: "", New: y1},
		}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		if remoteRef(t, remote, refstore.Prefix+"x") != x2 || remoteRef(t, remote, refstore.Prefix+"y") != y1 {
			t.Fatal("the atomic write did not land both refs")
		}
	})
}

// TestPartition: while the transport refuses, a read and a write fail with
// ErrUnreachable and nothing is written anywhere (the remote keeps its
// record, the writer's mirror its old view); healed, the same write lands.
func TestPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	srv := remote.Serve(t)
	a := open(t, srv.URL)
	v1 := prepare(t, a, "leases/main", "token = 1\n", "")
	if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", New: v1}}, refstore.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	v2 := prepare(t, a, "leases/main", "token = 2\n", v1)
	srv.Partition(true)
	before := srv.Requests()
	err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v1, New: v2}}, refstore.PushOptions{})
	if !errors.Is(err, refstore.ErrUnreachable) || errors.Is(err, refstore.ErrConflict) {
		t.Fatalf("write while partitioned: %v, want ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("the error does not name the remote: %v", err)
	}
	if err := a.Fetch(ctx); !errors.Is(err, refstore.ErrUnreachable) {
		t.Fatalf("fetch while partitioned: %v", err)
	}
	if srv.Requests() == before {
		t.Fatal("the partitioned server saw no request: the test did not test a refusing transport")
	}
	if got := remoteRef(t, remote, refstore.Prefix+"leases/main"); got != v1 {
		t.Fatalf("remote moved to %s while partitioned", got)
	}
	if rec, err := a.Get(ctx, "leases/main"); err != nil || rec.ID != v1 {
		t.Fatalf("the writer's mirror moved while partitioned: %+v, %v", rec, err)
	}
	srv.Partition(false)
	if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "leases/main", Old: v1, New: v2}}, refstore.PushOptions{}); err != nil {
		t.Fatalf("healed: %v", err)
	}
	if got := remoteRef(t, remote, refstore.Prefix+"leases/main"); got != v2 {
		t.Fatalf("remote holds %s after the healed write, want %s", got, v2)
	}
}

// TestRefusedIsNotConflict: a server hook that declines is ErrRefused, not
// a lost compare-and-swap (a caller must not retry it as one), and push
// options reach the hook.
func TestRefusedIsNotConflict(t *testing.T) {
	t.Parallel()
	transports(t, func(t *testing.T, remote *refstoretest.Remote, url string) {
		ctx := context.Background()
		hook := filepath.Join(remote.Dir, "hooks", "pre-receive")
		script := "#!/bin/sh\n[ \"$GIT_PUSH_OPTION_0\" = ok ] && exit 0\necho declined by test >&2\nexit 1\n"
		if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		a := open(t, url)
		v1 := prepare(t, a, "x", "x = 1\n", "")
		err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "x", New: v1}}, refstore.PushOptions{})
		if !errors.Is(err, refstore.ErrRefused) || errors.Is(err, refstore.ErrConflict) {
			t.Fatalf("declined push: %v, want ErrRefused only", err)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"x"); got != "" {
			t.Fatal("a declined push landed")
		}
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "x", New: v1}}, refstore.PushOptions{Options: []string{"ok"}}); err != nil {
			t.Fatalf("push with the option the hook wants: %v", err)
		}
	})
}

func TestBadNames(t *testing.T) {
	t.Parallel()
	s := open(t, "file:///nonexistent")
	for _, name := range []string{"", "/a", "a/", "a//b", "a/../b", "a b", "-x", "a.lock"} {
		if _, err := s.Prepare(context.Background(), name, nil, ""); err == nil {
			t.Errorf("record name %q accepted", name)
		}
	}
	if _, err := refstore.Open(t.TempDir(), "--upload-pack=evil"); err == nil {
		t.Error("a remote starting with '-' accepted")
	}
	err := s.Update(context.Background(), []refstore.Update{{Ref: "heads/main", New: strings.Repeat("0", 40)}}, refstore.PushOptions{})
	if err == nil {
		t.Error("a ref that is not full accepted")
	}
}

// TestIdenticalCreatesOneWins: two machines creating the same record with
// the same data, in the same second, are still a compare-and-swap race
// with one winner. (Identical versions would be one object, and git
// reports pushing the id the remote already holds as up to date, so both
// would "win".)
func TestIdenticalCreatesOneWins(t *testing.T) {
	t.Parallel()
	fileOnly(t, func(t *testing.T, remote *refstoretest.Remote, url string) {
		ctx := context.Background()
		a, b := open(t, url), open(t, url)
		va := prepare(t, a, "jobs/j1", "state = \"queued\"\n", "")
		vb := prepare(t, b, "jobs/j1", "state = \"queued\"\n", "")
		if va == vb {
			t.Fatalf("two writers prepared the same version %s", va)
		}
		if err := a.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "jobs/j1", New: va}}, refstore.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		err := b.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "jobs/j1", New: vb}}, refstore.PushOptions{})
		if !errors.Is(err, refstore.ErrConflict) {
			t.Fatalf("second identical create: %v, want ErrConflict", err)
		}
		if got := remoteRef(t, remote, refstore.Prefix+"jobs/j1"); got != va {
			t.Fatalf("remote holds %s, want the winner's %s", got, va)
		}
	})
}
