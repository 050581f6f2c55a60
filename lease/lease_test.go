package lease_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// The test binary doubles as the other processes these tests need: an owner
// that lives until it is killed, and a waiter blocked in Acquire.
// LEASE_TEST_HELPER selects the mode; LEASE_TEST_DIR is the state dir.
const (
	helperEnv = "LEASE_TEST_HELPER"
	dirEnv    = "LEASE_TEST_DIR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "block":
		// An owner process: alive until stdin closes or it is killed.
		fmt.Println("alive")
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	case "waiter":
		os.Exit(waiterHelper())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// waiterHelper checks that the lease of main is busy (printing "busy"),
// then blocks in Acquire; once it holds the lease it prints "got TOKEN",
// holds it until stdin closes, releases it and prints "released".
func waiterHelper() int {
	m := lease.Open(os.Getenv(dirEnv))
	self, err := procid.Self()
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	req := lease.Request{Holder: "waiter", Owner: self, TTL: time.Hour}
	if _, err := m.TryAcquire(context.Background(), "main", req); !errors.Is(err, lease.ErrBusy) {
		fmt.Println("error: TryAcquire while held:", err)
		return 1
	}
	fmt.Println("busy")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := m.Acquire(ctx, "main", req)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("got", l.Token)
	io.Copy(io.Discard, os.Stdin)
	if err := m.Release(context.Background(), "main", l.Token); err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("released")
	return 0
}

var base = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a test clock: Manager.Now moves only when the test says so.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) Advance(d time.Duration) { c.now = c.now.Add(d) }

// newManager returns a manager of a fresh, initialised state dir on a test
// clock.
func newManager(t *testing.T) (*lease.Manager, *clock, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "orch")
	if err := gitstate.Init(dir); err != nil {
		t.Fatal(err)
	}
	m := lease.Open(dir)
	c := &clock{now: base}
	m.Now = c.Now
	return m, c, dir
}

func self(t *testing.T) procid.Identity {
	t.Helper()
	id, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func req(t *testing.T, holder string, ttl time.Duration) lease.Request {
	return lease.Request{Holder: holder, Owner: self(t), TTL: ttl}
}

func mustAcquire(t *testing.T, m *lease.Manager, target string, r lease.Request) *lease.Lease {
	t.Helper()
	l, err := m.TryAcquire(context.Background(), target, r)
	if err != nil {
		t.Fatalf("acquire %s: %v", target, err)
	}
	return l
}

func mustGet(t *testing.T, m *lease.Manager, target string) *lease.Lease {
	t.Helper()
	l, err := m.Get(target)
	if err != nil {
		t.Fatalf("Get(%s): %v", target, err)
	}
	return l
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// snapshot maps every file under dir (relative path) to its content; a
// directory maps to "<dir>".
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out[rel] = "<dir>"
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startOwner starts a helper process that lives until killed and returns
// its identity and a function that kills and reaps it.
func startOwner(t *testing.T) (procid.Identity, func()) {
	t.Helper()
	p := testproc.Start(t, append(os.Environ(), helperEnv+"=block"))
	if line, err := p.Out.ReadString('\n'); err != nil || line != "alive\n" {
		t.Fatalf("owner helper said %q, %v", line, err)
	}
	id, err := procid.Of(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	return id, p.Stop
}

func TestAcquireRenewRelease(t *testing.T) {
	m, clk, _ := newManager(t)
	ctx := context.Background()
	r := req(t, "alice", time.Minute)
	l, err := m.Acquire(ctx, "main", r)
	if err != nil {
		t.Fatal(err)
	}
	want := &lease.Lease{Version: 1, Target: "main", Holder: "alice", Owner: r.Owner, Token: 1,
		AcquiredAt: base, RenewedAt: base, TTLMS: 60000}
	if diff := cmp.Diff(want, l); diff != "" {
		t.Fatalf("Acquire (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGet(t, m, "main")); diff != "" {
		t.Fatalf("Get after Acquire (-want +got):\n%s", diff)
	}
	if l.TTL() != time.Minute {
		t.Fatalf("TTL() = %s, want 1m", l.TTL())
	}

	clk.Advance(50 * time.Second)
	rl, err := m.Renew(ctx, "main", l.Token)
	if err != nil {
		t.Fatal(err)
	}
	if !rl.RenewedAt.Equal(base.Add(50*time.Second)) || !rl.AcquiredAt.Equal(base) || rl.Token != 1 {
		t.Fatalf("Renew = %+v; want renewed at +50s, acquired at base, token 1", rl)
	}
	got := mustGet(t, m, "main")
	if !got.RenewedAt.Equal(rl.RenewedAt) {
		t.Fatalf("renewal not stored: renewed_at %s", got.RenewedAt)
	}
	// 100s after acquisition, 50s after renewal, with a 60s TTL: held.
	clk.Advance(50 * time.Second)
	if stale, why := lease.Stale(got, clk.Now()); stale {
		t.Fatalf("renewed lease stale: %s", why)
	}
	if _, err := m.TryAcquire(ctx, "main", req(t, "bob", time.Minute)); !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("acquire of a renewed lease: %v, want ErrBusy", err)
	}

	if err := m.Release(ctx, "main", l.Token); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, m, "main"); got != nil {
		t.Fatalf("after Release: %+v, want no lease", got)
	}
	if _, err := m.Renew(ctx, "main", l.Token); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("Renew after Release: %v, want ErrStaleToken", err)
	}
	if err := m.Release(ctx, "main", l.Token); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("second Release: %v, want ErrStaleToken", err)
	}
}

func TestAcquireRefusesBadInput(t *testing.T) {
	m, _, dir := newManager(t)
	ctx := context.Background()
	before := snapshot(t, dir)
	if _, err := m.TryAcquire(ctx, "main", req(t, "x", 0)); err == nil {
		t.Error("acquire with a zero TTL succeeded")
	}
	for _, target := range []string{"", "../x", "a/../b", "-x", "a\x00b", "a\nb"} {
		if _, err := m.TryAcquire(ctx, target, req(t, "x", time.Minute)); err == nil {
			t.Errorf("acquire of target %q succeeded", target)
		}
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Fatalf("refused acquires changed the state dir (-before +after):\n%s", diff)
	}
}

func TestSecondAcquireIsBusy(t *testing.T) {
	m, _, dir := newManager(t)
	ctx := context.Background()
	first := mustAcquire(t, m, "main", req(t, "alice", time.Hour))
	before := snapshot(t, dir)

	_, err := m.TryAcquire(ctx, "main", req(t, "bob", time.Hour))
	if !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("TryAcquire while held: %v, want ErrBusy", err)
	}
	if !strings.Contains(err.Error(), "alice") {
		t.Errorf("busy error %q does not name the holder", err)
	}

	const wait = 100 * time.Millisecond
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	start := time.Now()
	_, err = m.Acquire(wctx, "main", req(t, "bob", time.Hour))
	elapsed := time.Since(start)
	if !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("Acquire with a deadline while held: %v, want ErrBusy", err)
	}
	if wctx.Err() == nil || elapsed < wait {
		t.Fatalf("Acquire gave up after %s, before its %s deadline", elapsed, wait)
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Fatalf("busy acquires changed the state dir (-before +after):\n%s", diff)
	}
	if got := mustGet(t, m, "main"); got.Token != first.Token || got.Holder != "alice" {
		t.Fatalf("lease now %+v, want alice's token %d", got, first.Token)
	}
	// Another target is independent.
	if l := mustAcquire(t, m, "release/1.0", req(t, "bob", time.Hour)); l.Token != 1 {
		t.Fatalf("first token of another target: %d, want 1", l.Token)
	}
}

func TestReleaseWithStaleToken(t *testing.T) {
	m, _, dir := newManager(t)
	ctx := context.Background()
	t1 := mustAcquire(t, m, "main", req(t, "alice", time.Hour)).Token
	if err := m.Release(ctx, "main", t1); err != nil {
		t.Fatal(err)
	}
	t2 := mustAcquire(t, m, "main", req(t, "bob", time.Hour)).Token
	record := filepath.Join(dir, "leases", "main.toml")
	before := readFile(t, record)
	for _, tok := range []uint64{t1, t2 + 1, 0} {
		err := m.Release(ctx, "main", tok)
		if !errors.Is(err, lease.ErrStaleToken) {
			t.Fatalf("Release(%d) while %d holds: %v, want ErrStaleToken", tok, t2, err)
		}
		if _, err := m.Renew(ctx, "main", tok); !errors.Is(err, lease.ErrStaleToken) {
			t.Fatalf("Renew(%d) while %d holds: %v, want ErrStaleToken", tok, t2, err)
		}
	}
	if after := readFile(t, record); after != before {
		t.Fatalf("refused releases changed the record:\n%s\nwas\n%s", after, before)
	}
	if err := m.Release(ctx, "main", t2); err != nil {
		t.Fatalf("Release with the current token: %v", err)
	}
}

func TestTokensStrictlyIncrease(t *testing.T) {
	m, clk, dir := newManager(t)
	ctx := context.Background()
	seq := filepath.Join(dir, "leases", "main.seq")

	t1 := mustAcquire(t, m, "main", req(t, "a", time.Hour)).Token
	if err := m.Release(ctx, "main", t1); err != nil {
		t.Fatal(err)
	}
	t2 := mustAcquire(t, m, "main", req(t, "b", time.Second)).Token
	clk.Advance(2 * time.Second)
	reclaimed, errs := m.ReclaimStale(ctx, false)
	if diff := cmp.Diff([]string{"main"}, reclaimed); diff != "" || len(errs) != 0 {
		t.Fatalf("ReclaimStale = %v, %v; want [main]", reclaimed, errs)
	}
	if got := strings.TrimSpace(readFile(t, seq)); got != strconv.FormatUint(t2, 10) {
		t.Fatalf("counter after reclaim: %q, want %d", got, t2)
	}
	t3 := mustAcquire(t, m, "main", req(t, "c", time.Hour)).Token
	if !(t1 < t2 && t2 < t3) {
		t.Fatalf("tokens %d, %d, %d; want strictly increasing", t1, t2, t3)
	}
	if t1 != 1 || t3 != 3 {
		t.Fatalf("tokens %d..%d, want 1..3", t1, t3)
	}
	// The counter survives a new manager (another process) and a stale
	// lease taken over directly by TryAcquire.
	if err := m.Release(ctx, "main", t3); err != nil {
		t.Fatal(err)
	}
	m2 := lease.Open(dir)
	m2.Now = clk.Now
	t4 := mustAcquire(t, m2, "main", req(t, "d", time.Second)).Token
	clk.Advance(time.Minute)
	t5 := mustAcquire(t, m2, "main", req(t, "e", time.Hour)).Token
	if t4 != 4 || t5 != 5 {
		t.Fatalf("tokens after reopening: %d, %d; want 4, 5", t4, t5)
	}
	if got := strings.TrimSpace(readFile(t, seq)); got != "5" {
		t.Fatalf("counter %q, want 5", got)
	}
}

func TestDamagedCounterIsAnError(t *testing.T) {
	m, _, dir := newManager(t)
	mustAcquire(t, m, "main", req(t, "a", time.Hour))
	if err := m.Release(context.Background(), "main", 1); err != nil {
		t.Fatal(err)
	}
	seq := filepath.Join(dir, "leases", "main.seq")
	os.WriteFile(seq, []byte("garbage\n"), 0o644)
	if _, err := m.TryAcquire(context.Background(), "main", req(t, "b", time.Hour)); err == nil {
		t.Fatal("acquire with a damaged token counter succeeded; it could repeat a token")
	}
	if got := readFile(t, seq); got != "garbage\n" {
		t.Fatalf("counter rewritten to %q", got)
	}
	if l := mustGet(t, m, "main"); l != nil {
		t.Fatalf("lease %+v granted with a damaged counter", l)
	}
}

func TestStaleWhenOwnerDead(t *testing.T) {
	m, clk, _ := newManager(t)
	owner, kill := startOwner(t)
	l := mustAcquire(t, m, "main", lease.Request{Holder: "child", Owner: owner, TTL: time.Hour})
	if stale, why := lease.Stale(l, clk.Now()); stale {
		t.Fatalf("lease of a live owner stale: %s", why)
	}
	if got, _ := m.ReclaimStale(context.Background(), false); len(got) != 0 {
		t.Fatalf("reclaimed %v while the owner lives", got)
	}
	kill()
	stale, why := lease.Stale(l, clk.Now())
	if !stale {
		t.Fatal("lease of a dead owner not stale")
	}
	if !strings.Contains(why, "dead") {
		t.Errorf("reason %q does not say the owner is dead", why)
	}
	// The TTL has not passed: only the owner's death frees the lease.
	next, err := m.TryAcquire(context.Background(), "main", req(t, "next", time.Hour))
	if err != nil {
		t.Fatalf("acquire over a dead owner's lease: %v", err)
	}
	if next.Token <= l.Token || next.Holder != "next" {
		t.Fatalf("took over as %+v, want a larger token than %d", next, l.Token)
	}
}

// A lease owned by a process of another host or boot cannot be judged by
// liveness: only its TTL frees it.
func TestOwnerElsewhereIsNotDead(t *testing.T) {
	m, clk, _ := newManager(t)
	other := self(t)
	other.Host = "elsewhere.invalid"
	l := mustAcquire(t, m, "main", lease.Request{Holder: "remote", Owner: other, TTL: time.Minute})
	if stale, why := lease.Stale(l, clk.Now()); stale {
		t.Fatalf("lease of another host's process stale: %s", why)
	}
	clk.Advance(time.Minute + time.Millisecond)
	if stale, _ := lease.Stale(l, clk.Now()); !stale {
		t.Fatal("expired lease of another host's process not stale")
	}
}

func TestStaleByTTL(t *testing.T) {
	m, clk, _ := newManager(t)
	l := mustAcquire(t, m, "main", req(t, "a", time.Second))
	cases := []struct {
		at    time.Duration
		stale bool
	}{
		{0, false},
		{time.Second, false}, // exactly the TTL: not yet
		{time.Second + time.Millisecond, true},
		{2 * time.Second, true},
		{-time.Hour, false}, // the clock moved back
		{-time.Millisecond, false},
	}
	for _, c := range cases {
		stale, why := lease.Stale(l, base.Add(c.at))
		if stale != c.stale {
			t.Errorf("Stale at %+v = %v (%s), want %v", c.at, stale, why, c.stale)
		}
		if stale && !strings.Contains(why, "ttl") {
			t.Errorf("Stale at %+v: reason %q does not mention the ttl", c.at, why)
		}
	}
	// The manager's own clock moved back: nothing is reclaimed, the lease
	// stays busy.
	clk.now = base.Add(-time.Hour)
	if got, errs := m.ReclaimStale(context.Background(), false); len(got) != 0 || len(errs) != 0 {
		t.Fatalf("clock moved back: reclaimed %v %v", got, errs)
	}
	if ok, err := m.Reclaim(context.Background(), "main"); ok || err != nil {
		t.Fatalf("Reclaim with the clock moved back: %v, %v", ok, err)
	}
	if _, err := m.TryAcquire(context.Background(), "main", req(t, "b", time.Second)); !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("acquire with the clock moved back: %v, want ErrBusy", err)
	}
	if got := mustGet(t, m, "main"); got == nil || got.Token != l.Token {
		t.Fatalf("lease %+v, want token %d kept", got, l.Token)
	}
}

// ReclaimStale deletes the stale lease records and nothing else: not the
// live leases, not the token counters, not the lock files, not a stray
// file. A dry run deletes nothing.
func TestReclaimStaleOnlyStale(t *testing.T) {
	m, clk, dir := newManager(t)
	ctx := context.Background()
	owner, kill := startOwner(t)
	mustAcquire(t, m, "expired", req(t, "a", time.Second))
	mustAcquire(t, m, "dead/owner", lease.Request{Holder: "b", Owner: owner, TTL: time.Hour})
	mustAcquire(t, m, "live", req(t, "c", time.Hour))
	mustAcquire(t, m, "release/2.0", req(t, "d", time.Hour))
	// A released lease leaves its counter behind.
	mustAcquire(t, m, "released", req(t, "e", time.Hour))
	if err := m.Release(ctx, "released", 1); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "leases", "README"), []byte("not a lease\n"), 0o644)
	kill()
	clk.Advance(2 * time.Second)

	before := snapshot(t, dir)
	got, errs := m.ReclaimStale(ctx, true)
	if diff := cmp.Diff([]string{"dead/owner", "expired"}, got); diff != "" || len(errs) != 0 {
		t.Fatalf("dry run reports (-want +got):\n%s\nerrors %v", diff, errs)
	}
	if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
		t.Fatalf("dry run changed the state dir (-before +after):\n%s", diff)
	}

	got, errs = m.ReclaimStale(ctx, false)
	if diff := cmp.Diff([]string{"dead/owner", "expired"}, got); diff != "" || len(errs) != 0 {
		t.Fatalf("ReclaimStale (-want +got):\n%s\nerrors %v", diff, errs)
	}
	want := map[string]string{}
	for k, v := range before {
		want[k] = v
	}
	delete(want, filepath.Join("leases", "expired.toml"))
	delete(want, filepath.Join("leases", "dead%2Fowner.toml"))
	if diff := cmp.Diff(want, snapshot(t, dir)); diff != "" {
		t.Fatalf("ReclaimStale changed more than the stale records (-want +got):\n%s", diff)
	}
	leases, bad, err := m.List()
	if err != nil || len(bad) != 0 {
		t.Fatal(err, bad)
	}
	var targets []string
	for _, l := range leases {
		targets = append(targets, l.Target)
	}
	if diff := cmp.Diff([]string{"live", "release/2.0"}, targets); diff != "" {
		t.Fatalf("leases left (-want +got):\n%s", diff)
	}
	// Reclaiming again finds nothing.
	if got, _ := m.ReclaimStale(ctx, false); len(got) != 0 {
		t.Fatalf("second pass reclaimed %v", got)
	}
}

// Targets that need escaping in a file name come back as they were.
func TestListTargetNames(t *testing.T) {
	m, _, _ := newManager(t)
	names := []string{"main", "feat/a/b", "a%2Fb", "100%", "x%25y"}
	for _, n := range names {
		mustAcquire(t, m, n, req(t, "h", time.Hour))
	}
	leases, bad, err := m.List()
	if err != nil || len(bad) != 0 {
		t.Fatal(err, bad)
	}
	var got []string
	for _, l := range leases {
		got = append(got, l.Target)
		if g := mustGet(t, m, l.Target); g == nil || g.Target != l.Target {
			t.Errorf("Get(%q) = %+v", l.Target, g)
		}
	}
	sort.Strings(names)
	if diff := cmp.Diff(names, got); diff != "" {
		t.Fatalf("List targets (-want +got):\n%s", diff)
	}
}

// A lease record that does not parse, or is larger than any lease record
// (statefile.MaxSizeDefault), is reported as unreadable under its path,
// never trusted, never deleted; the other leases are unaffected.
func TestCorruptRecordIsReportedNotDeleted(t *testing.T) {
	for name, garbage := range map[string]string{
		"not-toml": "version = [\x00 not toml\n",
		// Valid TOML: only its size makes it unreadable.
		"huge": strings.Repeat("# padding\n", statefile.MaxSizeDefault/10+1) + "version = 1\ntarget = \"main\"\ntoken = 9\n",
	} {
		t.Run(name, func(t *testing.T) { testCorruptRecord(t, garbage) })
	}
}

func testCorruptRecord(t *testing.T, garbage string) {
	m, clk, dir := newManager(t)
	ctx := context.Background()
	mustAcquire(t, m, "main", req(t, "a", time.Second))
	mustAcquire(t, m, "other", req(t, "b", time.Second))
	path := filepath.Join(dir, "leases", "main.toml")
	if err := os.WriteFile(path, []byte(garbage), 0o644); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)

	var ue *gitstate.UnreadableError
	if _, err := m.Get("main"); !errors.As(err, &ue) || ue.Path != path {
		t.Fatalf("Get of a corrupt record: %v, want *UnreadableError for %s", err, path)
	}
	leases, bad, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 1 || leases[0].Target != "other" || len(bad) != 1 || bad[0].Path != path {
		t.Fatalf("List = %v, unreadable %v; want other, and %s unreadable", leases, bad, path)
	}
	for _, dry := range []bool{true, false} {
		got, errs := m.ReclaimStale(ctx, dry)
		if diff := cmp.Diff([]string{"other"}, got); diff != "" {
			t.Errorf("ReclaimStale(dry=%v) reclaimed (-want +got):\n%s", dry, diff)
		}
		if !errors.As(errs[path], &ue) || len(errs) != 1 {
			t.Errorf("ReclaimStale(dry=%v) errors %v, want the corrupt record reported under its path", dry, errs)
		}
	}
	if _, err := m.Reclaim(ctx, "main"); err == nil {
		t.Error("Reclaim of a corrupt record: no error")
	}
	if _, err := m.TryAcquire(ctx, "main", req(t, "c", time.Hour)); err == nil || errors.Is(err, lease.ErrBusy) {
		t.Errorf("acquire over a corrupt record: %v, want the parse error", err)
	}
	if got := readFile(t, path); got != garbage {
		t.Fatalf("corrupt record changed to %q", got)
	}
}

// A waiter in another process, blocked in Acquire, gets the lease when the
// holder releases it.
func TestWaiterInAnotherProcessGetsLease(t *testing.T) {
	m, _, dir := newManager(t)
	m.Now = time.Now
	ctx := context.Background()
	held := mustAcquire(t, m, "main", req(t, "parent", time.Hour))

	p := testproc.Start(t, append(os.Environ(), helperEnv+"=waiter", dirEnv+"="+dir))
	cmd, stdin, out := p.Cmd, p.In, p.Out
	line := func() string {
		t.Helper()
		s, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("waiter: %q, %v", s, err)
		}
		return strings.TrimSpace(s)
	}
	if s := line(); s != "busy" {
		t.Fatalf("waiter said %q, want busy", s)
	}
	// The waiter is in Acquire (or about to be): the lease is still ours.
	if got := mustGet(t, m, "main"); got.Token != held.Token {
		t.Fatalf("lease taken from a live holder: %+v", got)
	}
	released := time.Now()
	if err := m.Release(ctx, "main", held.Token); err != nil {
		t.Fatal(err)
	}
	s := line()
	t.Logf("waiter reported the lease %s after the release", time.Since(released))
	want := fmt.Sprintf("got %d", held.Token+1)
	if s != want {
		t.Fatalf("waiter said %q, want %q", s, want)
	}
	got := mustGet(t, m, "main")
	if got == nil || got.Holder != "waiter" || got.Owner.PID != cmd.Process.Pid || got.Token != held.Token+1 {
		t.Fatalf("lease after hand-off: %+v, want the waiter's (pid %d)", got, cmd.Process.Pid)
	}
	stdin.Close()
	if s := line(); s != "released" {
		t.Fatalf("waiter said %q, want released", s)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if got := mustGet(t, m, "main"); got != nil {
		t.Fatalf("lease after the waiter released it: %+v", got)
	}
}

// Fencing: a holder whose lease was reclaimed while it slept cannot write.
func TestFencingAfterReclaim(t *testing.T) {
	m, clk, _ := newManager(t)
	ctx := context.Background()
	t1 := mustAcquire(t, m, "main", req(t, "sleeper", time.Second)).Token
	clk.Advance(2 * time.Second)
	ok, err := m.Reclaim(ctx, "main")
	if err != nil || !ok {
		t.Fatalf("Reclaim of an expired lease: %v, %v", ok, err)
	}
	t2 := mustAcquire(t, m, "main", req(t, "next", time.Hour)).Token
	if t2 <= t1 {
		t.Fatalf("t2 = %d, not larger than t1 = %d", t2, t1)
	}
	ran := false
	err = m.WithToken(ctx, "main", t1, func() error { ran = true; return nil })
	if !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("WithToken(t1): %v, want ErrStaleToken", err)
	}
	if ran {
		t.Fatal("WithToken ran fn for a stale token")
	}
	if _, err := m.Renew(ctx, "main", t1); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("Renew(t1): %v, want ErrStaleToken", err)
	}
	if err := m.Release(ctx, "main", t1); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("Release(t1): %v, want ErrStaleToken", err)
	}
	if got := mustGet(t, m, "main"); got.Token != t2 || got.Holder != "next" {
		t.Fatalf("lease after the stale holder's attempts: %+v, want t2's", got)
	}
	err = m.WithToken(ctx, "main", t2, func() error { ran = true; return nil })
	if err != nil || !ran {
		t.Fatalf("WithToken(t2): ran=%v, %v", ran, err)
	}
	// fn's error is passed on.
	boom := errors.New("boom")
	if err := m.WithToken(ctx, "main", t2, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("WithToken(t2) with a failing fn: %v, want boom", err)
	}
	// No lease at all: stale too.
	if err := m.Release(ctx, "main", t2); err != nil {
		t.Fatal(err)
	}
	ran = false
	if err := m.WithToken(ctx, "main", t2, func() error { ran = true; return nil }); !errors.Is(err, lease.ErrStaleToken) || ran {
		t.Fatalf("WithToken with no lease: %v (fn ran: %v), want ErrStaleToken", err, ran)
	}
}

// WithToken holds the lease lock while fn runs: a reclaim that comes
// during fn waits for it, so it can never come between the fencing check
// and the write.
func TestWithTokenExcludesReclaim(t *testing.T) {
	m, clk, _ := newManager(t)
	ctx := context.Background()
	t1 := mustAcquire(t, m, "main", req(t, "a", time.Second)).Token
	err := m.WithToken(ctx, "main", t1, func() error {
		clk.Advance(time.Hour)
		rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		ok, err := m.Reclaim(rctx, "main")
		if ok || err == nil {
			return fmt.Errorf("Reclaim inside WithToken: %v, %v; want a lock timeout", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, m, "main"); got == nil || got.Token != t1 {
		t.Fatalf("lease %+v, want t1 kept", got)
	}
	if ok, err := m.Reclaim(ctx, "main"); !ok || err != nil {
		t.Fatalf("Reclaim after WithToken: %v, %v", ok, err)
	}
}

// A waiter sleeps until the kernel tells it a lease record went away: with
// its periodic recheck an hour long it still takes the lease as soon as
// the holder releases it.
func TestWaiterWokenByRelease(t *testing.T) {
	m, _, _ := newManager(t)
	m.WaitRecheck = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := mustAcquire(t, m, "main", req(t, "alice", time.Hour))
	busy := make(chan struct{}, 1)
	lease.SetBusyHook(m, func() {
		select {
		case busy <- struct{}{}:
		default:
		}
	})
	got := make(chan error, 1)
	go func() {
		l, err := m.Acquire(ctx, "main", req(t, "bob", time.Hour))
		if err == nil && l.Holder != "bob" {
			err = fmt.Errorf("holder %q", l.Holder)
		}
		got <- err
	}()
	<-busy // the waiter found the lease held and is going to sleep
	if err := m.Release(ctx, "main", first.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiter after the release: %v (a context deadline here means it slept through the release)", err)
	}
}

// Where the file system cannot notify, a waiter polls (with a backoff up
// to WaitPollMax) and still takes the lease soon after its release.
func TestWaiterPollsWithoutNotify(t *testing.T) {
	m, _, _ := newManager(t)
	m.WaitRecheck = time.Hour
	lease.SetNoWatch(m)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := mustAcquire(t, m, "main", req(t, "alice", time.Hour))
	looks := make(chan struct{}, 100)
	lease.SetBusyHook(m, func() {
		select {
		case looks <- struct{}{}:
		default:
		}
	})
	got := make(chan error, 1)
	go func() {
		l, err := m.Acquire(ctx, "main", req(t, "bob", time.Hour))
		if err == nil && l.Holder != "bob" {
			err = fmt.Errorf("holder %q", l.Holder)
		}
		got <- err
	}()
	// Two looks while held: the waiter polls, it does not sleep for an
	// hour.
	<-looks
	<-looks
	if err := m.Release(ctx, "main", first.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("polling waiter after the release: %v", err)
	}
}

// An acquire whose wait is over while another process holds the record
// lock (a renewal, a fenced write) reports the lease busy, exit 3, not a
// failure: lease_cli.txtar's `lease acquire --wait 0s` met a renewal of
// `lease run` there and failed with a lock timeout.
func TestAcquireBusyWhileRecordLocked(t *testing.T) {
	m, _, _ := newManager(t)
	mustAcquire(t, m, "other", req(t, "x", time.Hour)) // creates the leases dir
	unlock, err := statefile.Lock(context.Background(), lease.LockPath(m, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	_, err = m.Acquire(ctx, "main", req(t, "bob", time.Hour))
	if !errors.Is(err, lease.ErrBusy) {
		t.Fatalf("acquire with no wait while the record is locked: %v, want ErrBusy", err)
	}
	if l := mustGet(t, m, "main"); l != nil {
		t.Fatalf("lease written while its record was locked: %+v", l)
	}
}
