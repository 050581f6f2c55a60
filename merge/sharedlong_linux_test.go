package merge_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/testproc"
)

var (
	mergeLong     = flag.Bool("merge.long", false, "run TestSharedMergesLong: merges/s through the shared lease, 4 machines against 1, on one http remote")
	mergeBranches = flag.Int("merge.branches", 24, "TestSharedMergesLong: branches merged per run, split among the machines")
	mergeMachines = flag.Int("merge.machines", 4, "TestSharedMergesLong: machines of the run compared with one")
)

// hostEnv is the host name a shared-machine helper gives its own UTS
// namespace, so that its lease owner is on a host of its own.
const hostEnv = "MERGE_TEST_HOST"

// A shared-machine helper is started before TestMain (whose helper modes
// are the portable ones): it needs a UTS namespace, which is Linux's.
func init() {
	if os.Getenv(helperEnv) == "shared-machine" {
		os.Exit(sharedMachineHelper())
	}
}

// sharedMachineHelper is one machine of TestSharedMergesLong: in its own
// UTS namespace (host $MERGE_TEST_HOST) it merges the comma-separated
// branches $MERGE_TEST_BRANCH into main, one after the other, through
// remote $MERGE_TEST_REMOTE and the lease shared there, as `orch-hooks
// merge --branch B` does in remote mode. It prints "ready", waits for
// stdin to close (every machine starts together), then per merge
// "merged BRANCH KIND TOKEN START END" (Unix ns of the call's start and
// return).
func sharedMachineHelper() int {
	fail := func(err error) int {
		fmt.Println("error", strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	host := os.Getenv(hostEnv)
	if err := syscall.Sethostname([]byte(host)); err != nil {
		return fail(fmt.Errorf("sethostname %s: %w", host, err))
	}
	if h, err := procid.Host(); err != nil || h != host {
		return fail(fmt.Errorf("host is %q (%v), want %q", h, err, host))
	}
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		return fail(err)
	}
	remote := os.Getenv(remoteEnv)
	s, err := refstore.Open(repo.CommonDir, remote)
	if err != nil {
		return fail(err)
	}
	shared := remotelease.New(s)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, br := range strings.Split(os.Getenv(branchEnv), ",") {
		start := time.Now()
		res, err := merge.New(repo).Merge(context.Background(), merge.Request{
			Branch: br, Target: "main", Remote: remote, Shared: shared, Wait: 10 * time.Minute, Author: author,
		})
		end := time.Now()
		if err != nil {
			return fail(fmt.Errorf("merge %s: %w", br, err))
		}
		fmt.Println("merged", br, res.Kind, res.SharedToken, start.UnixNano(), end.UnixNano())
	}
	return 0
}

// pushCounter is a proxy in front of the test's git server that counts
// the pushes and fetches started: each starts with one GET of
// info/refs?service=git-receive-pack (or git-upload-pack), whether or not
// it then lands. A push whose --force-with-lease the client finds stale
// never sends its POST, so counting on the server's side of the
// transaction would miss it.
type pushCounter struct {
	pushes, fetches atomic.Int64
}

func servePushCounter(t *testing.T, upstream string) (*pushCounter, string) {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	repoPath := u.Path
	u.Path = ""
	proxy := httputil.NewSingleHostReverseProxy(u)
	c := &pushCounter{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/info/refs") {
			switch r.URL.Query().Get("service") {
			case "git-receive-pack":
				c.pushes.Add(1)
			case "git-upload-pack":
				c.fetches.Add(1)
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return c, srv.URL + repoPath
}

// leaseVersion is one version of the lease record on the remote.
type leaseVersion struct {
	id string
	remotelease.Lease
}

// leaseHistory reads every version of target's lease on the bare remote
// dir, oldest first, with one rev-list and one cat-file --batch.
func leaseHistory(t *testing.T, dir, target string) []leaseVersion {
	t.Helper()
	ids := strings.Fields(refstoretest.Git(t, dir, "rev-list", "--reverse", refstore.Prefix+remotelease.RecordName(target)))
	var in strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&in, "%s:%s\n", id, refstore.FileName)
	}
	cmd := exec.Command("git", "cat-file", "--batch")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(in.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cat-file --batch in %s: %v", dir, err)
	}
	r := bufio.NewReader(bytes.NewReader(out))
	vs := make([]leaseVersion, len(ids))
	for i, id := range ids {
		head, err := r.ReadString('\n')
		f := strings.Fields(head)
		if err != nil || len(f) != 3 || f[1] != "blob" {
			t.Fatalf("version %s of the lease: cat-file said %q (%v)", id, head, err)
		}
		size, _ := strconv.Atoi(f[2])
		data := make([]byte, size+1) // the blob and its newline
		if _, err := io.ReadFull(r, data); err != nil {
			t.Fatal(err)
		}
		vs[i].id = id
		if _, err := statefile.DecodeTOML(data[:size], &vs[i].Lease); err != nil {
			t.Fatalf("version %s of the lease: %v", id, err)
		}
	}
	return vs
}

// mergeRecord is one merge a machine reported.
type mergeRecord struct {
	machine    int
	branch     string
	kind       string
	token      uint64
	start, end time.Time
}

// mergeRun is the outcome of one run of TestSharedMergesLong.
type mergeRun struct {
	machines, merges   int
	elapsed            time.Duration
	wait, held         []time.Duration // per merge: lease wait, lease held
	pushes, landed     int             // push attempts, and lease versions written
	fetches            int
	loadStart, loadEnd string
	// order is the machine of each token in turn; handoffs counts the
	// tokens that went to another machine than the token before.
	order    string
	handoffs int
}

func (r mergeRun) perSecond() float64 { return float64(r.merges) / r.elapsed.Seconds() }

func (r mergeRun) busy() time.Duration {
	var d time.Duration
	for _, h := range r.held {
		d += h
	}
	return d
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// TestSharedMergesLong measures merges per second into one target through
// the shared merge lease: one machine, then -merge.machines machines (4),
// each a clone in a process of its own with a host of its own (a UTS
// namespace), against one bare remote served over smart HTTP on loopback.
// -merge.branches branches (24), each one commit adding a file of its own
// (clean merges, none a fast-forward), are split among the machines, and
// every machine merges its share one after the other. It prints a table
// and the ratios of the two runs, then checks each run on the remote:
// every branch merged exactly once, one merge commit per branch on main's
// first-parent line, one lease token per merge, the tokens issued
// strictly increasing, each to the host that reported it, nothing
// reclaimed. docs/DISTRIBUTED.md "Measured: merges through the shared
// lease" has the figures. Skipped without -merge.long.
func TestSharedMergesLong(t *testing.T) {
	if !*mergeLong {
		t.Skip("a long measurement: run with -merge.long (docs/DISTRIBUTED.md)")
	}
	probe := exec.Command("true")
	probe.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	if err := probe.Run(); err != nil {
		t.Skipf("a machine needs a host name of its own (a UTS namespace, CAP_SYS_ADMIN): %v", err)
	}
	var runs []mergeRun
	for _, n := range []int{1, *mergeMachines} {
		runs = append(runs, runMerges(t, n, *mergeBranches))
	}
	t.Logf("%d branches, one commit each, merged into main through the shared lease over smart HTTP on loopback", *mergeBranches)
	t.Logf("| machines | merges | elapsed | merges/s | lease wait p50 | lease wait p90 | lease held p50 | lease busy | lost pushes | fetches/merge | handoffs | load at start → end |")
	t.Logf("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range runs {
		t.Logf("| %d | %d | %.1f s | %.2f | %.2f s | %.2f s | %.2f s | %.0f%% | %d of %d | %.1f | %d | %s → %s |",
			r.machines, r.merges, r.elapsed.Seconds(), r.perSecond(),
			quantile(r.wait, 0.5).Seconds(), quantile(r.wait, 0.9).Seconds(), quantile(r.held, 0.5).Seconds(),
			100*r.busy().Seconds()/r.elapsed.Seconds(), r.pushes-r.landed, r.pushes,
			float64(r.fetches)/float64(r.merges), r.handoffs, r.loadStart, r.loadEnd)
	}
	for _, r := range runs {
		t.Logf("%d machines: the machine of each token in turn: %s", r.machines, r.order)
	}
	one, many := runs[0], runs[1]
	t.Logf("%d machines against 1: merges/s ×%.2f, lease wait p50 ×%.2f, p90 ×%.2f, lease held p50 ×%.2f",
		many.machines, many.perSecond()/one.perSecond(),
		quantile(many.wait, 0.5).Seconds()/quantile(one.wait, 0.5).Seconds(),
		quantile(many.wait, 0.9).Seconds()/quantile(one.wait, 0.9).Seconds(),
		quantile(many.held, 0.5).Seconds()/quantile(one.held, 0.5).Seconds())
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// runMerges runs n machines merging branches branches into main of a fresh
// remote, and checks the outcome on the remote.
func runMerges(t *testing.T, n, branches int) mergeRun {
	remote := refstoretest.NewRemote(t)
	counter, httpURL := servePushCounter(t, remote.Serve(t).URL)
	base := t.TempDir()
	seed := filepath.Join(base, "seed")
	refstoretest.Git(t, base, "clone", "-q", remote.FileURL(), seed)
	os.WriteFile(filepath.Join(seed, "a.txt"), []byte("a\n"), 0o644)
	refstoretest.Git(t, seed, "add", "a.txt")
	refstoretest.Git(t, seed, "commit", "-q", "-m", "base")
	tips := map[string]string{} // branch → its commit
	names := make([]string, branches)
	for j := range names {
		names[j] = fmt.Sprintf("feat/%02d", j)
		refstoretest.Git(t, seed, "checkout", "-q", "-b", names[j], "main")
		os.WriteFile(filepath.Join(seed, fmt.Sprintf("f%02d.txt", j)), []byte("f\n"), 0o644)
		refstoretest.Git(t, seed, "add", ".")
		refstoretest.Git(t, seed, "commit", "-q", "-m", "f"+names[j])
		tips[names[j]] = refstoretest.Git(t, seed, "rev-parse", "HEAD")
	}
	// main moves on after the branches forked, so that every merge is a
	// merge commit, the first one included.
	refstoretest.Git(t, seed, "checkout", "-q", "main")
	os.WriteFile(filepath.Join(seed, "b.txt"), []byte("b\n"), 0o644)
	refstoretest.Git(t, seed, "add", "b.txt")
	refstoretest.Git(t, seed, "commit", "-q", "-m", "start")
	start := refstoretest.Git(t, seed, "rev-parse", "HEAD")
	refstoretest.Git(t, seed, "push", "-q", "origin", "refs/heads/*:refs/heads/*")

	procs := make([]*testproc.Proc, n)
	hosts := make([]string, n)
	for i := range procs {
		dir := filepath.Join(base, fmt.Sprintf("m%d", i))
		refstoretest.Git(t, base, "clone", "-q", "-b", "main", remote.FileURL(), dir)
		refstoretest.Git(t, dir, "remote", "set-url", "origin", httpURL)
		r, err := gitstate.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := gitstate.Init(r.StateDir()); err != nil {
			t.Fatal(err)
		}
		var mine []string
		for j := i; j < branches; j += n {
			mine = append(mine, names[j])
		}
		hosts[i] = fmt.Sprintf("machine-%d-of-%d", i, n)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=shared-machine", repoEnv+"="+dir,
			branchEnv+"="+strings.Join(mine, ","), remoteEnv+"=origin", hostEnv+"="+hosts[i])
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
		procs[i] = testproc.StartCommand(t, cmd)
		procs[i].WaitAtCleanup = true
		if line, err := procs[i].Out.ReadString('\n'); line != "ready\n" {
			t.Fatalf("machine %d: %q %v", i, line, err)
		}
	}
	pushes0, fetches0 := counter.pushes.Load(), counter.fetches.Load()
	run := mergeRun{machines: n, loadStart: loadavg()}
	t0 := time.Now()
	for _, p := range procs {
		p.In.Close()
	}
	var (
		mu      sync.Mutex
		records []mergeRecord
		wg      sync.WaitGroup
		errs    = make([]error, n)
	)
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				line, err := p.Out.ReadString('\n')
				if err != nil {
					break
				}
				f := strings.Fields(line)
				if len(f) != 6 || f[0] != "merged" {
					errs[i] = errors.Join(errs[i], fmt.Errorf("machine %d: %s", i, strings.TrimSpace(line)))
					continue
				}
				tok, _ := strconv.ParseUint(f[3], 10, 64)
				s, _ := strconv.ParseInt(f[4], 10, 64)
				e, _ := strconv.ParseInt(f[5], 10, 64)
				mu.Lock()
				records = append(records, mergeRecord{machine: i, branch: f[1], kind: f[2], token: tok,
					start: time.Unix(0, s), end: time.Unix(0, e)})
				mu.Unlock()
			}
			if err := p.Close(); err != nil {
				errs[i] = errors.Join(errs[i], fmt.Errorf("machine %d exited: %w", i, err))
			}
		}()
	}
	wg.Wait()
	run.loadEnd = loadavg()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, r := range records {
		if r.end.After(last) {
			last = r.end
		}
	}
	run.merges, run.elapsed = len(records), last.Sub(t0)
	run.pushes, run.fetches = int(counter.pushes.Load()-pushes0), int(counter.fetches.Load()-fetches0)

	// Every branch merged once, by the machine it was given to, as a
	// merge commit.
	if len(records) != branches {
		t.Fatalf("%d machines reported %d merges, want %d", n, len(records), branches)
	}
	byToken := map[uint64]mergeRecord{}
	seen := map[string]bool{}
	for _, r := range records {
		if r.kind != string(merge.Merged) || seen[r.branch] || r.token == 0 {
			t.Fatalf("%d machines: machine %d reported %s %s token %d (branches merged so far %v)", n, r.machine, r.branch, r.kind, r.token, seen)
		}
		if _, dup := byToken[r.token]; dup {
			t.Fatalf("%d machines: token %d reported by two merges: %+v and %+v", n, r.token, byToken[r.token], r)
		}
		seen[r.branch], byToken[r.token] = true, r
	}
	// On the remote, main's first-parent line above start is one merge
	// commit per branch, whose second parent is that branch's commit.
	merged := map[string]int{}
	for _, line := range strings.Split(refstoretest.Git(t, remote.Dir, "rev-list", "--first-parent", "--parents", start+"..main"), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("%d machines: main's first-parent line has %q, want merge commits only", n, line)
		}
		merged[f[2]]++
	}
	for br, tip := range tips {
		if merged[tip] != 1 {
			t.Fatalf("%d machines: %s (%s) is merged %d times on main's first-parent line, want once", n, br, tip, merged[tip])
		}
	}
	if len(merged) != branches {
		t.Fatalf("%d machines: main's first-parent line merges %d commits, want the %d branches", n, len(merged), branches)
	}

	// The lease's history: tokens 1, 2, … issued strictly in order, each
	// to the host of the machine that reported it, each held once from
	// acquire to release, none reclaimed.
	hist := leaseHistory(t, remote.Dir, "main")
	run.landed = len(hist)
	var prev *leaseVersion
	acquired := map[uint64]time.Time{}
	for k := range hist {
		v := &hist[k]
		switch {
		case v.Held && (prev == nil || !prev.Held):
			var want uint64 = 1
			if prev != nil {
				want = prev.Token + 1
			}
			if v.Token != want {
				t.Fatalf("%d machines: version %s acquires token %d after token %d, want %d", n, v.id, v.Token, want-1, want)
			}
			r, ok := byToken[v.Token]
			if !ok || v.Owner.Host != hosts[r.machine] {
				t.Fatalf("%d machines: token %d went to %s; the merge that reported it: %+v", n, v.Token, v.Owner, r)
			}
			acquired[v.Token] = v.AcquiredAt
			if len(run.order) > 0 && run.order[len(run.order)-1] != byte('0'+r.machine) {
				run.handoffs++
			}
			run.order += string(rune('0' + r.machine))
			run.wait = append(run.wait, v.AcquiredAt.Sub(r.start))
		case v.Held:
			if v.Token != prev.Token || v.Owner != prev.Owner {
				t.Fatalf("%d machines: version %s (token %d, %s) follows held token %d of %s without a release", n, v.id, v.Token, v.Owner, prev.Token, prev.Owner)
			}
		default:
			if prev == nil || !prev.Held || v.Token != prev.Token || v.Ended != "released" {
				t.Fatalf("%d machines: version %s frees token %d (%q), want a release of the held token", n, v.id, v.Token, v.Ended)
			}
			run.held = append(run.held, v.RenewedAt.Sub(acquired[v.Token]))
		}
		prev = v
	}
	if len(acquired) != branches || prev.Held {
		t.Fatalf("%d machines: %d tokens issued (last held %v), want %d, all released", n, len(acquired), prev.Held, branches)
	}
	return run
}
