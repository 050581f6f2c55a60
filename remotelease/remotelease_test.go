package remotelease_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/statefile"
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

// machine is one host sharing the remote: its own repository, clock and
// host identity (a test-only identity: the host name is what makes a
// holder foreign, and a foreign holder is judged by TTL alone).
type machine struct {
	dir   string // its repository
	host  string
	store *refstore.Store
	m     *remotelease.Manager
}

func newMachine(t testing.TB, url, host string) *machine {
	t.Helper()
	dir := refstoretest.NewMachine(t)
	s, err := refstore.Open(dir, url)
	if err != nil {
		t.Fatal(err)
	}
	m := remotelease.New(s)
	m.ClockSkew = time.Millisecond
	return &machine{dir: dir, host: host, store: s, m: m}
}

// owner is a process identity on the machine's (test) host.
func (mc *machine) owner(pid int) procid.Identity {
	return procid.Identity{Host: mc.host, BootID: "boot-" + mc.host, PidNS: 1, PID: pid, StartTime: 1}
}

func (mc *machine) req(pid int, ttl time.Duration) lease.Request {
	return lease.Request{Holder: fmt.Sprintf("merger %d on %s", pid, mc.host), Owner: mc.owner(pid), TTL: ttl}
}

// version is one version of a record on the remote.
type version struct {
	id string
	l  remotelease.Lease
}

// chain reads the versions of ref on the server itself, oldest first, by
// following first parents from its tip.
func chain(t testing.TB, remote *refstoretest.Remote, ref string) []version {
	t.Helper()
	out, err := refstoretest.TryGit(remote.Dir, "rev-list", "--first-parent", "--reverse", ref)
	if err != nil {
		t.Fatalf("rev-list %s: %v\n%s", ref, err, out)
	}
	ids := strings.Fields(out)
	cmd := exec.Command("git", "cat-file", "--batch")
	cmd.Dir = remote.Dir
	var in strings.Builder
	for _, id := range ids {
		in.WriteString(id + ":" + refstore.FileName + "\n")
	}
	cmd.Stdin = strings.NewReader(in.String())
	raw, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(strings.NewReader(string(raw)))
	var vs []version
	for _, id := range ids {
		var oid, typ string
		var size int
		if _, err := fmt.Fscanf(r, "%s %s %d\n", &oid, &typ, &size); err != nil {
			t.Fatalf("cat-file of %s: %v", id, err)
		}
		buf := make([]byte, size+1)
		if _, err := readFull(r, buf); err != nil {
			t.Fatal(err)
		}
		var l remotelease.Lease
		if _, err := statefile.DecodeTOML(buf[:size], &l); err != nil {
			t.Fatalf("version %s: %v", id, err)
		}
		vs = append(vs, version{id: id, l: l})
	}
	return vs
}

func readFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// checkChain asserts the lease's history obeys the lease rules: a token
// changes only by an acquire, to exactly one more, and never goes back;
// every version of one token is written by that token's holder.
func checkChain(t testing.TB, vs []version) {
	t.Helper()
	for i, v := range vs {
		if i == 0 {
			if v.l.Token != 1 || !v.l.Held {
				t.Fatalf("first version %s: token %d held %v, want an acquire of token 1", v.id, v.l.Token, v.l.Held)
			}
			continue
		}
		p := vs[i-1].l
		switch {
		case v.l.Token == p.Token+1:
			if !v.l.Held || !v.l.AcquiredAt.Equal(v.l.RenewedAt) {
				t.Fatalf("version %d (%s): token %d appears without an acquire: %+v", i, v.id, v.l.Token, v.l)
			}
		case v.l.Token == p.Token:
			if v.l.Owner != p.Owner || !p.Held {
				t.Fatalf("version %d (%s): token %d written by %s after %s (held %v): two holders' writes landed",
					i, v.id, v.l.Token, v.l.Owner, p.Owner, p.Held)
			}
		default:
			t.Fatalf("version %d (%s): token %d follows token %d", i, v.id, v.l.Token, p.Token)
		}
	}
}

func remoteRef(t testing.TB, r *refstoretest.Remote, ref string) string {
	out, err := refstoretest.TryGit(r.Dir, "rev-parse", "-q", "--verify", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// TestLeaseAcrossMachines: acquire, busy elsewhere, renew, release, a new
// token; a holder from another host is stale only by TTL, and once taken
// over, the old holder can neither renew nor make a fenced write.
func TestLeaseAcrossMachines(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	url := remote.FileURL() // TestServerFencing runs the lease over HTTP too
	a, b, c := newMachine(t, url, "host-a"), newMachine(t, url, "host-b"), newMachine(t, url, "host-c")
	ha, err := a.m.TryAcquire(ctx, "main", a.req(10, time.Hour))
	if err != nil || ha.Token != 1 {
		t.Fatalf("first acquire: %+v, %v", ha, err)
	}
	if _, err := b.m.TryAcquire(ctx, "main", b.req(20, time.Hour)); !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("second machine: %v, want ErrBusy", err)
	}
	if err := a.m.Renew(ctx, ha); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Release(ctx, ha); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Release(ctx, ha); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("second release: %v, want ErrStaleToken", err)
	}
	if err := a.m.Renew(ctx, ha); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew after release: %v, want ErrStaleToken", err)
	}
	hb, err := b.m.TryAcquire(ctx, "main", b.req(20, time.Minute))
	if err != nil || hb.Token != 2 {
		t.Fatalf("acquire after release: %+v, %v; want token 2", hb, err)
	}
	// host-b's owner pid 20 does not exist on this machine, but host-b is
	// not this host: only the TTL can free its lease.
	if _, err := c.m.TryAcquire(ctx, "main", c.req(30, time.Minute)); !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("foreign holder judged by pid: %v", err)
	}
	skewed := time.Now().Add(time.Minute + time.Second)
	c.m.Now = func() time.Time { return skewed }
	hc, err := c.m.TryAcquire(ctx, "main", c.req(30, time.Minute))
	if err != nil || hc.Token != 3 {
		t.Fatalf("acquire over an expired lease: %+v, %v; want token 3", hc, err)
	}
	// The old holder wakes up: nothing it does lands.
	if err := b.m.Renew(ctx, hb); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew by the reclaimed holder: %v, want ErrStaleToken", err)
	}
	mainRef := "refs/heads/main"
	commit := prepareCommit(t, b.store)
	err = b.m.Fenced(ctx, hb, []refstore.Update{{Ref: mainRef, Old: "", New: commit}}, false)
	if !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("fenced write by the reclaimed holder: %v, want ErrStaleToken", err)
	}
	if got := remoteRef(t, remote, mainRef); got != "" {
		t.Fatalf("the reclaimed holder's write landed: main = %s", got)
	}
	if err := b.m.Release(ctx, hb); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("release by the reclaimed holder: %v", err)
	}
	commitC := prepareCommit(t, c.store)
	if err := c.m.Fenced(ctx, hc, []refstore.Update{{Ref: mainRef, Old: "", New: commitC}}, false); err != nil {
		t.Fatalf("the holder's fenced write: %v", err)
	}
	if got := remoteRef(t, remote, mainRef); got != commitC {
		t.Fatalf("main = %s, want the holder's %s", got, commitC)
	}
	// A fenced write whose own compare-and-swap loses keeps the lease.
	err = c.m.Fenced(ctx, hc, []refstore.Update{{Ref: mainRef, Old: "", New: prepareCommit(t, c.store)}}, false)
	if !errors.Is(err, refstore.ErrConflict) || errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("fenced write with a stale target: %v, want ErrConflict, lease kept", err)
	}
	if err := c.m.Renew(ctx, hc); err != nil {
		t.Fatalf("renew after a lost target write: %v", err)
	}
	checkChain(t, chain(t, remote, refstore.Prefix+remotelease.RecordName("main")))
}

// prepareCommit makes a commit object in the machine's repository (an
// empty tree) to push as a branch tip.
func prepareCommit(t testing.TB, s *refstore.Store) string {
	t.Helper()
	id, err := s.Prepare(context.Background(), "scratch", []byte(time.Now().String()), "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestOwnHostDeadOwner: on the holder's own host and boot, a holder
// confirmed dead by identity frees the lease at once, TTL or not.
func TestOwnHostDeadOwner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	a := newMachine(t, remote.FileURL(), "")
	self, err := procid.Self()
	if err != nil {
		t.Skip(err)
	}
	dead := self
	dead.StartTime++ // our pid, another start time: a process that is gone
	if _, err := a.m.TryAcquire(ctx, "main", lease.Request{Holder: "dead", Owner: dead, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	h, err := a.m.TryAcquire(ctx, "main", lease.Request{Holder: "live", Owner: self, TTL: time.Hour})
	if err != nil || h.Token != 2 {
		t.Fatalf("acquire over a dead owner on this host: %+v, %v", h, err)
	}
	if _, err := a.m.TryAcquire(ctx, "main", lease.Request{Holder: "other", Owner: dead, TTL: time.Hour}); !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("a live owner on this host: %v, want ErrBusy", err)
	}
	if ok, err := a.m.Reclaim(ctx, "main"); ok || err != nil {
		t.Fatalf("reclaim of a live lease: %v, %v", ok, err)
	}
}

func TestStale(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	l := &remotelease.Lease{Held: true, TTLMS: 60_000, Owner: procid.Identity{Host: "elsewhere", PID: 1, StartTime: 1}}
	for _, tc := range []struct {
		renewed time.Time
		skew    time.Duration
		want    bool
	}{
		{now.Add(-59 * time.Second), 0, false},
		{now.Add(-61 * time.Second), 0, true},
		{now.Add(-61 * time.Second), 30 * time.Second, false}, // inside the skew allowance
		{now.Add(-91 * time.Second), 30 * time.Second, true},
		{now.Add(time.Hour), 0, false}, // renewed "in the future": the clocks differ, never stale by that
	} {
		l.RenewedAt = tc.renewed
		if got, why := remotelease.Stale(l, now, tc.skew); got != tc.want {
			t.Errorf("renewed %s ago, skew %s: stale %v (%s), want %v", now.Sub(tc.renewed), tc.skew, got, why, tc.want)
		}
	}
}

// TestLeaseRace: machines on distinct hosts race acquire, fenced writes
// (each a renewal), release, reclaim and abandonment (a holder that stops renewing, its lease
// taken over by TTL) on one remote, with a TTL short enough that leases are
// taken over all the time. Afterwards the lease's history on the server
// obeys the token rules, and the fenced record's history shows no write of
// a holder after a later token's.
func TestLeaseRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	// file:// (receive-pack and upload-pack processes, the server's own
	// ref transaction): the cheapest real transport, for the most writes.
	url := remote.FileURL()
	const machines, rounds = 3, 3
	dataRef := refstore.Prefix + "data/counter"
	var mu sync.Mutex
	// fenced data version -> its writer's token and the lease version
	// pushed with it
	type write struct {
		token   uint64
		leaseID string
	}
	landed := map[string]write{}
	var wg sync.WaitGroup
	errs := make(chan error, machines*rounds*4)
	for i := 0; i < machines; i++ {
		mc := newMachine(t, url, fmt.Sprintf("host-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				h, err := mc.m.TryAcquire(ctx, "main", mc.req(100+r, 50*time.Millisecond))
				if errors.Is(err, lease.ErrBusy) {
					// Free a lease whose holder went quiet, as a reaper
					// would; racing its holder's writes.
					if _, err := mc.m.Reclaim(ctx, "main"); err != nil {
						errs <- err
						return
					}
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				for w := 0; w < 2; w++ { // two fenced writes (each renews the lease)
					rec, err := mc.m.Store.Get(ctx, "data/counter")
					if err != nil {
						errs <- err
						return
					}
					id, err := mc.m.Store.Prepare(ctx, "data/counter", []byte(fmt.Sprintf("token = %d\n", h.Token)), rec.ID)
					if err != nil {
						errs <- err
						return
					}
					err = mc.m.Fenced(ctx, h, []refstore.Update{{Ref: dataRef, Old: rec.ID, New: id}}, false)
					if err == nil {
						mu.Lock()
						landed[id] = write{h.Token, h.ID}
						mu.Unlock()
					} else if !errors.Is(err, lease.ErrStaleToken) && !errors.Is(err, refstore.ErrConflict) {
						errs <- err
						return
					}
				}
				if r%2 == 0 {
					if err := mc.m.Release(ctx, h); err != nil && !errors.Is(err, lease.ErrStaleToken) {
						errs <- err
						return
					}
				} // else abandoned: taken over once its TTL passes
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	vs := chain(t, remote, refstore.Prefix+remotelease.RecordName("main"))
	checkChain(t, vs)
	if last := vs[len(vs)-1].l.Token; last < 2 {
		t.Fatalf("only %d token(s) issued: the race did not race", last)
	}
	// Every fenced write that reported success is on the server, and the
	// fenced record's tokens never go back.
	data := chain2(t, remote, dataRef)
	if len(data) != len(landed) {
		t.Fatalf("%d fenced writes reported landed, the server has %d", len(landed), len(data))
	}
	// Each landed write's lease renewal is in the lease's history, and the
	// writes are in the order of their renewals there: no write of a
	// holder landed after a later holder's lease.
	at := map[string]int{}
	for i, v := range vs {
		at[v.id] = i
	}
	prev := -1
	for _, id := range data {
		w, ok := landed[id]
		if !ok {
			t.Fatalf("data version %s on the server was never reported landed", id)
		}
		i, ok := at[w.leaseID]
		if !ok {
			t.Fatalf("the write %s of token %d landed without its lease renewal %s", id, w.token, w.leaseID)
		}
		if i <= prev || vs[i].l.Token != w.token {
			t.Fatalf("the write %s of token %d is out of order with the lease's history (version %d after %d)", id, w.token, i, prev)
		}
		prev = i
	}
	t.Logf("%d lease versions, %d tokens, %d fenced writes landed", len(vs), vs[len(vs)-1].l.Token, len(data))
}

// chain2 lists the versions of ref on the server, oldest first.
func chain2(t testing.TB, remote *refstoretest.Remote, ref string) []string {
	out, err := refstoretest.TryGit(remote.Dir, "rev-list", "--first-parent", "--reverse", ref)
	if err != nil {
		t.Fatalf("rev-list %s: %v\n%s", ref, err, out)
	}
	return strings.Fields(out)
}
