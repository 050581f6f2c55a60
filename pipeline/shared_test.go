package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// Helper-process settings of a shared monitor (sharedMonitorHelper).
const (
	hostEnv = "PIPELINE_TEST_HOST"
	ttlEnv  = "PIPELINE_TEST_TTL"
	beatEnv = "PIPELINE_TEST_BEAT"
)

// machine is one clone of the shared remote standing for one machine:
// its own repository, state dir and Env in remote mode as Host.
type machine struct {
	host string
	dir  string
	env  *pipeline.Env
}

// cluster is a bare remote and the machines sharing it.
type cluster struct {
	remote *refstoretest.Remote
	seed   *gittest.Repo
	ms     []*machine
	beat   time.Duration
	ttl    time.Duration
}

// withShared puts env in remote mode against remote "origin" as host.
func withShared(env *pipeline.Env, host string, beat, ttl time.Duration) error {
	s, err := refstore.Open(env.Repo.CommonDir, "origin")
	if err != nil {
		return err
	}
	q := remotejob.New(s, host, env.Repo.StateDir())
	q.TTL = ttl
	env.Shared = &pipeline.Shared{Queue: q, Leases: remotelease.New(s), Heartbeat: beat}
	return nil
}

// newCluster makes a bare remote holding main (one commit) and n clones
// of it (hosts a, b, c, ...), each with orchToml as its orch.toml.
func newCluster(t *testing.T, n int, orchToml string, beat, ttl time.Duration) *cluster {
	t.Helper()
	c := &cluster{remote: refstoretest.NewRemote(t), seed: gittest.New(t), beat: beat, ttl: ttl}
	c.seed.Git(c.seed.Dir, "push", "-q", c.remote.FileURL(), "main")
	for i := 0; i < n; i++ {
		host := string(rune('a' + i))
		dir := filepath.Join(t.TempDir(), "m-"+host)
		c.seed.Git(filepath.Dir(dir), "clone", "-q", c.remote.FileURL(), dir)
		r, err := gitstate.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := gitstate.Init(r.StateDir()); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, config.FileName), []byte(orchToml), 0o644); err != nil {
			t.Fatal(err)
		}
		env, err := pipelinetest.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		env.Store.Actor = "test"
		if err := withShared(env, host, beat, ttl); err != nil {
			t.Fatal(err)
		}
		c.ms = append(c.ms, &machine{host: host, dir: dir, env: env})
	}
	return c
}

// remoteJob reads job id from the remote as machine m sees it after a Sync.
func remoteJob(t *testing.T, m *machine, id string) (*remotejob.Job, string) {
	t.Helper()
	ctx := context.Background()
	q := m.env.Shared.Queue
	if err := q.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	ent, err := q.Get(ctx, id)
	if err != nil {
		t.Fatalf("remote job %s: %v", id, err)
	}
	if ent.Err != nil {
		t.Fatalf("remote job %s: %v", id, ent.Err)
	}
	return ent.Job, ent.VersionID
}

// remoteJobs lists the ids of every job on the remote.
func remoteJobs(t *testing.T, m *machine) []string {
	t.Helper()
	ctx := context.Background()
	if err := m.env.Shared.Queue.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := m.env.Shared.Queue.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range l {
		if e.Job != nil {
			ids = append(ids, e.Job.ID+":"+string(e.Job.Status))
		} else {
			ids = append(ids, e.Name+":"+e.Err.Error())
		}
	}
	return ids
}

// remoteRef is ref on the bare remote ("" when absent).
func (c *cluster) remoteRef(t *testing.T, ref string) string {
	t.Helper()
	out, err := refstoretest.TryGit(c.remote.Dir, "rev-parse", "-q", "--verify", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// refLog is every version ref has had on the remote (newest first), from
// the record commits' parent chain: a record's versions are commits each
// on top of the last.
func (c *cluster) refLog(t *testing.T, ref string) []string {
	t.Helper()
	if c.remoteRef(t, ref) == "" {
		return nil
	}
	out := refstoretest.Git(t, c.remote.Dir, "rev-list", "--first-parent", ref)
	return strings.Fields(out)
}

// counterToml: build commits on the task's branch and counts its runs in
// a file outside every clone; its finalize step counts too; merge merges
// through the shared lease.
func counterToml(dir string) string {
	return fmt.Sprintf(`target = "main"

[[stages]]
name = "build"
run = "echo run >> %[1]s/build-runs && git commit -q --allow-empty -m built-$ORCH_JOB_ID"
gates = ["commits_ahead"]
finalize = ["echo step >> %[1]s/build-steps"]
next = "merge"

[[stages]]
name = "merge"
kind = "merge"
`, dir)
}

func lines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// A shared job claimed on machine a runs there, its settle queues the next
// stage's job on the remote and pushes its branch; machine b claims and
// runs that merge job, which merges through the shared lease and pushes
// main. Each ran once, neither machine advanced locally, and the remote
// ends with both jobs done.
func TestSharedJobRunsAcrossMachines(t *testing.T) {
	counts := t.TempDir()
	c := newCluster(t, 2, counterToml(counts), 50*time.Millisecond, 10*time.Second)
	a, b := c.ms[0], c.ms[1]
	ctx := context.Background()

	sj, created, err := a.env.EnqueueShared(ctx, pipeline.Request{Branch: "feat"})
	if err != nil || !created {
		t.Fatalf("enqueue: %v (created %v)", err, created)
	}
	rep, err := a.env.SharedPass(ctx, 1)
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("a's pass: %v %v", err, rep.Errors)
	}
	if len(rep.Claimed) != 1 || rep.Claimed[0] != sj.ID {
		t.Fatalf("a claimed %v, want [%s]", rep.Claimed, sj.ID)
	}
	// b sees it running on a: nothing to claim.
	if rep, err := b.env.SharedPass(ctx, 1); err != nil || len(rep.Claimed) != 0 {
		t.Fatalf("b's pass claimed %v (err %v) while a has the job", rep.Claimed, err)
	}
	lj, err := a.env.Store.Get(sj.ID)
	if err != nil || lj.Status != gitstate.Queued || lj.SharedRun == "" {
		t.Fatalf("a's local job: %+v, %v", lj, err)
	}
	rj, _ := remoteJob(t, a, sj.ID)
	if rj.Status != gitstate.Running || rj.Host != "a" || rj.Run != lj.SharedRun {
		t.Fatalf("remote job after a's claim: %s on %q run %q, local run %q", rj.Status, rj.Host, rj.Run, lj.SharedRun)
	}

	res, err := a.env.Run(ctx, sj.ID, pipeline.RunOptions{})
	if err != nil || res.Job.Status != gitstate.Done {
		t.Fatalf("a's run: %v, %+v", err, res.Job)
	}
	if res.Next != nil || res.Job.NextJob != "" {
		t.Errorf("a advanced locally: next %v / %q", res.Next, res.Job.NextJob)
	}
	rj, _ = remoteJob(t, a, sj.ID)
	nextID := gitstate.JobID("feat", "merge", 1)
	if rj.Status != gitstate.Done || rj.Next != nextID || rj.Beats == 0 {
		t.Fatalf("remote build job: %s next %q beats %d; want done, next %s, beats > 0", rj.Status, rj.Next, rj.Beats, nextID)
	}
	aFeat := refstoretest.Git(t, a.dir, "rev-parse", "refs/heads/feat")
	if got := c.remoteRef(t, "refs/heads/feat"); got != aFeat {
		t.Fatalf("remote feat is %q, a's is %s: the branch was not pushed with the settle", got, aFeat)
	}
	if _, err := a.env.Store.Get(nextID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Fatalf("a has a local %s (%v): a shared job must not advance locally", nextID, err)
	}

	// b claims the merge job, brings feat over, runs it.
	rep, err = b.env.SharedPass(ctx, 1)
	if err != nil || len(rep.Claimed) != 1 || rep.Claimed[0] != nextID {
		t.Fatalf("b's pass: claimed %v, %v %v", rep.Claimed, err, rep.Errors)
	}
	if rep, err := a.env.SharedPass(ctx, 1); err != nil || len(rep.Claimed) != 0 {
		t.Fatalf("a claimed %v (err %v) while b has the merge job", rep.Claimed, err)
	}
	if got := refstoretest.Git(t, b.dir, "rev-parse", "refs/heads/feat"); got != aFeat {
		t.Fatalf("b's feat is %s, want the remote's %s", got, aFeat)
	}
	res, err = b.env.Run(ctx, nextID, pipeline.RunOptions{})
	if err != nil || res.Job.Status != gitstate.Done {
		t.Fatalf("b's merge run: %v, %+v", err, res.Job)
	}
	rm, _ := remoteJob(t, b, nextID)
	if rm.Status != gitstate.Done || rm.Host != "b" || rm.Next != "" {
		t.Fatalf("remote merge job: %s on %s next %q", rm.Status, rm.Host, rm.Next)
	}
	main := c.remoteRef(t, "refs/heads/main")
	if out, err := refstoretest.TryGit(c.remote.Dir, "merge-base", "--is-ancestor", aFeat, main); err != nil {
		t.Fatalf("remote main %s does not contain feat %s: %v %s", main, aFeat, err, out)
	}
	if n := lines(t, filepath.Join(counts, "build-runs")); n != 1 {
		t.Errorf("build ran %d times, want once", n)
	}
	if n := lines(t, filepath.Join(counts, "build-steps")); n != 1 {
		t.Errorf("build's finalize step ran %d times, want once", n)
	}
	if ids := remoteJobs(t, a); len(ids) != 2 {
		t.Errorf("remote jobs %v, want the build and the merge job only", ids)
	}
	// More passes change nothing.
	for _, m := range c.ms {
		if rep, err := m.env.SharedPass(ctx, 1); err != nil || len(rep.Claimed)+len(rep.Settled) != 0 {
			t.Errorf("%s's later pass did %+v (%v)", m.host, rep, err)
		}
	}
}

// sharedHelperEnv is the Env of a re-exec'd helper process: the
// repository $PIPELINE_TEST_REPO in remote mode as host
// $PIPELINE_TEST_HOST, with the test's beat and TTL, acting as actor.
func sharedHelperEnv(actor string) (*pipeline.Env, error) {
	env, err := pipelinetest.Open(os.Getenv(repoEnv))
	if err != nil {
		return nil, err
	}
	env.Store.Actor = actor
	beat, _ := time.ParseDuration(os.Getenv(beatEnv))
	ttl, _ := time.ParseDuration(os.Getenv(ttlEnv))
	if err := withShared(env, os.Getenv(hostEnv), beat, ttl); err != nil {
		return nil, err
	}
	return env, nil
}

// sharedMonitorHelper runs job $PIPELINE_TEST_JOB as its monitor in remote
// mode as host $PIPELINE_TEST_HOST (a monitor a dispatch would start).
func sharedMonitorHelper() int {
	env, err := sharedHelperEnv("monitor")
	if err != nil {
		fmt.Fprintln(os.Stderr, "shared monitor helper:", err)
		return 1
	}
	res, err := env.Run(context.Background(), os.Getenv(jobEnv), pipeline.RunOptions{Log: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "shared monitor helper:", err)
		return 1
	}
	fmt.Println(res.Job.Status)
	return 0
}

// startSharedMonitor starts machine m's monitor of job id in its own
// process (crash point point armed, "" for none). A cleanup stops the
// job's process groups by identity.
func (c *cluster) startSharedMonitor(t *testing.T, m *machine, id, point string) *testproc.Proc {
	t.Helper()
	env := append(c.seed.Env(), helperEnv+"=sharedmonitor", repoEnv+"="+m.dir, jobEnv+"="+id,
		hostEnv+"="+m.host, beatEnv+"="+c.beat.String(), ttlEnv+"="+c.ttl.String(), crashpoint.EnvVar+"="+point)
	p := testproc.Start(t, env)
	t.Cleanup(func() {
		if j, err := m.env.Store.Get(id); err == nil {
			procid.SignalGroup(j.Command, syscall.SIGKILL)
			procid.SignalGroup(j.Finalizer, syscall.SIGKILL)
		}
	})
	return p
}

// waitFile waits (polling) for path to exist, up to d.
func waitFile(t *testing.T, path string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %s", path, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blockingToml: build says it started, then waits for a go file before it
// commits and says it finished.
func blockingToml(dir string) string {
	return fmt.Sprintf(`target = "main"

[[stages]]
name = "build"
run = "echo $$ >> %[1]s/started; while [ ! -e %[1]s/go ]; do sleep 0.02; done; git commit -q --allow-empty -m built; echo done >> %[1]s/finished"
next = "review"

[[stages]]
name = "review"
run = "true"
`, dir)
}

// claimOn enqueues a build job for feat and has m claim it; it returns
// the job id.
func (c *cluster) claimOn(t *testing.T, m *machine) string {
	t.Helper()
	ctx := context.Background()
	sj, _, err := m.env.EnqueueShared(ctx, pipeline.Request{Branch: "feat"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := m.env.SharedPass(ctx, 1)
	if err != nil || len(rep.Claimed) != 1 {
		t.Fatalf("%s's pass: claimed %v, %v %v", m.host, rep.Claimed, err, rep.Errors)
	}
	return sj.ID
}

// A job cancelled from machine b while it runs on a: a's next beat finds
// it lost, a's command is stopped (it never finishes), a's local job ends
// failed saying so, and a writes nothing to the remote after the cancel:
// the record's version history ends with b's cancel, and no next job is
// created.
func TestSharedJobLostWhileRunning(t *testing.T) {
	files := t.TempDir()
	// Beats far apart enough that the cancel's read and write fit
	// between two of them on a loaded machine (a cancel that keeps
	// losing its compare-and-swap to beats gives up after a few tries).
	c := newCluster(t, 2, blockingToml(files), time.Second, 10*time.Second)
	a, b := c.ms[0], c.ms[1]
	ctx := context.Background()
	id := c.claimOn(t, a)
	p := c.startSharedMonitor(t, a, id, "")
	waitFile(t, filepath.Join(files, "started"), 20*time.Second)

	// A cancel that loses its compare-and-swap to beats a few times in a
	// row gives up and says to try again: the user would.
	var cres pipeline.SharedCancel
	var err error
	for i := 0; i < 5; i++ {
		if cres, err = b.env.CancelShared(ctx, id); err == nil {
			break
		}
	}
	if err != nil || !cres.Won {
		t.Fatalf("cancel from b: %v (won %v)", err, cres.Won)
	}
	afterCancel := c.remoteRef(t, refstore.Prefix+remotejob.RecordName(id))

	if err := waitProc(t, p, time.Minute); err != nil {
		t.Fatalf("a's monitor: %v", err)
	}
	lj, err := a.env.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if lj.Status != gitstate.Failed || !strings.Contains(lj.Reason, "lost the shared job") {
		t.Fatalf("a's local job: %s (%s), want failed, lost the shared job", lj.Status, lj.Reason)
	}
	if l, _ := procid.GroupLiveness(lj.Command); l == procid.Alive {
		t.Fatalf("a's command group %v still runs after the job was lost", lj.Command)
	}
	os.WriteFile(filepath.Join(files, "go"), nil, 0o644) // a command still waiting would now finish
	if n := lines(t, filepath.Join(files, "finished")); n != 0 {
		t.Errorf("the lost job's command finished (%d)", n)
	}
	// A settle repair on a does nothing either.
	if rep, err := a.env.SharedPass(ctx, 0); err != nil || len(rep.Settled) != 0 {
		t.Errorf("a's pass after the loss: %+v %v", rep, err)
	}
	if got := c.remoteRef(t, refstore.Prefix+remotejob.RecordName(id)); got != afterCancel {
		t.Errorf("the record moved after b's cancel (%s → %s): the lost runner wrote", afterCancel, got)
	}
	rj, _ := remoteJob(t, b, id)
	if rj.Status != gitstate.Cancelled {
		t.Errorf("remote job %s, want cancelled", rj.Status)
	}
	if ids := remoteJobs(t, b); len(ids) != 1 {
		t.Errorf("remote jobs %v: a next job was created for a lost job", ids)
	}
	if got := c.remoteRef(t, "refs/heads/feat"); got != "" {
		t.Errorf("the lost job's branch reached the remote (%s)", got)
	}
}

// Machine a's monitor is killed (-9) mid-command and a is never heard of
// again: b, observing the record unchanged for the TTL on its own clock,
// expires it; a stale settle from a afterwards (its reaper ending the
// job once the command ended) writes nothing and creates no next job.
func TestSharedJobExpiredWhenMachineDies(t *testing.T) {
	files := t.TempDir()
	ttl := 1500 * time.Millisecond
	c := newCluster(t, 2, blockingToml(files), 50*time.Millisecond, ttl)
	a, b := c.ms[0], c.ms[1]
	// b's wall clock runs an hour ahead of a's: the expiry is timed by
	// b's own boot clock from its first sighting, never by the records'
	// times.
	b.env.Shared.Queue.Now = func() time.Time { return time.Now().Add(time.Hour) }
	ctx := context.Background()
	id := c.claimOn(t, a)
	p := c.startSharedMonitor(t, a, id, "")
	waitFile(t, filepath.Join(files, "started"), 20*time.Second)
	p.Stop() // kill -9 of the monitor, through its handle
	before, _ := remoteJob(t, b, id)
	if before.Status != gitstate.Running {
		t.Fatalf("remote job %s before expiry", before.Status)
	}
	start := time.Now()
	var expired bool
	for !expired {
		if time.Since(start) > 30*time.Second {
			t.Fatal("b never expired the job")
		}
		rep, err := b.env.SharedPass(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Expired) > 0 && rep.Expired[0].Won && time.Since(start) < ttl {
			t.Fatalf("b expired the job %s after its first look, TTL %s", time.Since(start), ttl)
		}
		for _, x := range rep.Expired {
			if x.ID == id && x.Won {
				expired = true
				if x.Unchanged < ttl {
					t.Errorf("expired after %s unchanged, TTL %s", x.Unchanged, ttl)
				}
			}
		}
		time.Sleep(100 * time.Millisecond) // b's passes come every interval; the expiry is timed by b's clock
	}
	rj, _ := remoteJob(t, b, id)
	if rj.Status != gitstate.Failed || !strings.Contains(rj.Reason, "heartbeat expired") {
		t.Fatalf("remote job: %s (%s)", rj.Status, rj.Reason)
	}
	expiredVersion := c.remoteRef(t, refstore.Prefix+remotejob.RecordName(id))

	// a comes back: its command finishes, a's reaper-side finalize ends
	// the local job and tries to settle: lost, nothing written.
	os.WriteFile(filepath.Join(files, "go"), nil, 0o644)
	waitFile(t, filepath.Join(files, "finished"), 20*time.Second)
	lj, _ := a.env.Store.Get(id)
	waitGoneGroup(t, lj.Command)
	res, err := a.env.Finalize(ctx, id, pipeline.Ending{EndedBy: gitstate.EndedByReaperDead, Failure: "lost"})
	if err != nil || !res.Won {
		t.Fatalf("a's finalize: %v won %v", err, res.Won)
	}
	if got := c.remoteRef(t, refstore.Prefix+remotejob.RecordName(id)); got != expiredVersion {
		t.Errorf("a wrote after the expiry: %s → %s", expiredVersion, got)
	}
	if rep, err := a.env.SharedPass(ctx, 0); err != nil || len(rep.Settled) != 0 {
		t.Errorf("a's pass settled %v (%v) a job b expired", rep.Settled, err)
	}
	if ids := remoteJobs(t, b); len(ids) != 1 {
		t.Errorf("remote jobs %v: an expired job advanced", ids)
	}
}

// waitProc waits for helper p to exit, up to d; past it the helper is
// killed (through its handle) and the test fails: a monitor that never
// stops its lost job would otherwise hang the test.
func waitProc(t *testing.T, p *testproc.Proc, d time.Duration) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- p.Close() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		p.Cmd.Process.Kill()
		<-ch
		t.Fatalf("helper pid %d still running after %s", p.Pid(), d)
		return nil
	}
}

func waitGoneGroup(t *testing.T, id procid.Identity) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l, err := procid.GroupLiveness(id)
		if err != nil || l != procid.Alive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process group %v still alive", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Machine a is killed right after its local terminal claim, before its
// settle (crash point finalize.claimed): the remote still shows the job
// running on a. a's next pass settles it from the local record: done,
// the branch pushed, one next job; passes after that change nothing.
func TestSharedSettleRepairAfterCrash(t *testing.T) {
	counts := t.TempDir()
	c := newCluster(t, 1, counterToml(counts), 50*time.Millisecond, 30*time.Second)
	a := c.ms[0]
	ctx := context.Background()
	id := c.claimOn(t, a)
	p := c.startSharedMonitor(t, a, id, "finalize.claimed")
	err := p.Close()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("monitor did not die at its crash point: %v", err)
	}
	lj, err := a.env.Store.Get(id)
	if err != nil || lj.Status != gitstate.Done {
		t.Fatalf("a's local job: %v %v", lj.Status, err)
	}
	rj, _ := remoteJob(t, a, id)
	if rj.Status != gitstate.Running {
		t.Fatalf("remote job %s before the repair, want running (the settle never ran)", rj.Status)
	}
	if c.remoteRef(t, "refs/heads/feat") != "" {
		t.Fatal("feat reached the remote before the settle")
	}
	rep, err := a.env.SharedPass(ctx, 0)
	if err != nil || len(rep.Errors) > 0 || len(rep.Settled) != 1 {
		t.Fatalf("repair pass: settled %v, %v %v", rep.Settled, err, rep.Errors)
	}
	rj, _ = remoteJob(t, a, id)
	nextID := gitstate.JobID("feat", "merge", 1)
	if rj.Status != gitstate.Done || rj.Next != nextID {
		t.Fatalf("remote job after repair: %s next %q", rj.Status, rj.Next)
	}
	if got, want := c.remoteRef(t, "refs/heads/feat"), refstoretest.Git(t, a.dir, "rev-parse", "feat"); got != want {
		t.Errorf("remote feat %q, want a's %s", got, want)
	}
	nextLog := c.refLog(t, refstore.Prefix+remotejob.RecordName(nextID))
	for i := 0; i < 2; i++ {
		if rep, err := a.env.SharedPass(ctx, 0); err != nil || len(rep.Settled) != 0 {
			t.Errorf("pass %d after the repair: %+v %v", i, rep, err)
		}
	}
	if got := c.refLog(t, refstore.Prefix+remotejob.RecordName(nextID)); len(nextLog) != 1 || len(got) != 1 {
		t.Errorf("next job's versions %v then %v: want it created once", nextLog, got)
	}
	if n := lines(t, filepath.Join(counts, "build-runs")); n != 1 {
		t.Errorf("build ran %d times", n)
	}
}

// newHTTPCluster is newCluster with machine a's origin served over smart
// HTTP by the returned server (which can partition it away); the other
// machines reach the same bare remote over file://, so they go on seeing
// it while a is cut off.
func newHTTPCluster(t *testing.T, n int, orchToml string, beat, ttl time.Duration) (*cluster, *refstoretest.Server) {
	t.Helper()
	c := newCluster(t, n, orchToml, beat, ttl)
	srv := c.remote.Serve(t)
	refstoretest.Git(t, c.ms[0].dir, "remote", "set-url", "origin", srv.URL)
	return c, srv
}

// stepsToml: build says it started, waits for a go file, commits; its
// finalize step counts its runs.
func stepsToml(dir string) string {
	return fmt.Sprintf(`target = "main"

[[stages]]
name = "build"
run = "touch %[1]s/started; while [ ! -e %[1]s/go ]; do sleep 0.02; done; git commit -q --allow-empty -m built"
finalize = ["echo step >> %[1]s/steps"]
next = "review"

[[stages]]
name = "review"
run = "true"
`, dir)
}

// runAsync runs job id on m in this process (its monitor) and returns
// where its outcome arrives.
func runAsync(m *machine, id string) <-chan error {
	done := make(chan error, 1)
	go func() {
		res, err := m.env.Run(context.Background(), id, pipeline.RunOptions{Log: io.Discard})
		if err == nil && res.Job.Status != gitstate.Done {
			err = fmt.Errorf("ended %s: %s", res.Job.Status, res.Job.Reason)
		}
		done <- err
	}()
	return done
}

// waitRequests waits until srv has seen n more requests than from.
func waitRequests(t *testing.T, srv *refstoretest.Server, from, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for srv.Requests() < from+n {
		if time.Now().After(deadline) {
			t.Fatalf("the server saw %d requests, want %d more than %d", srv.Requests(), n, from)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Machine a is partitioned from the remote while its job's command runs:
// its beats fail, the job goes on; b, which still reaches the remote,
// does not expire it within the TTL. Healed, a's beats land again, its
// finalize step is fenced by one, and the job settles done with its next
// job and branch.
func TestSharedJobSurvivesPartition(t *testing.T) {
	files := t.TempDir()
	c, srv := newHTTPCluster(t, 2, stepsToml(files), 100*time.Millisecond, 30*time.Second)
	a, b := c.ms[0], c.ms[1]
	ctx := context.Background()
	id := c.claimOn(t, a)
	done := runAsync(a, id)
	waitFile(t, filepath.Join(files, "started"), 30*time.Second)
	before, _ := remoteJob(t, b, id)

	srv.Partition(true)
	waitRequests(t, srv, srv.Requests(), 6) // a's beats, refused
	if rep, err := b.env.SharedPass(ctx, 0); err != nil || len(rep.Expired) > 0 && rep.Expired[0].Won {
		t.Fatalf("b's pass during the partition: %+v %v", rep, err)
	}
	during, _ := remoteJob(t, b, id)
	srv.Partition(false)
	os.WriteFile(filepath.Join(files, "go"), nil, 0o644)

	if err := <-done; err != nil {
		t.Fatalf("a's run: %v", err)
	}
	rj, _ := remoteJob(t, b, id)
	if rj.Status != gitstate.Done || rj.Next == "" || rj.Beats <= during.Beats || during.Beats < before.Beats {
		t.Fatalf("remote job: %s next %q beats %d (before the partition %d, during %d)", rj.Status, rj.Next, rj.Beats, before.Beats, during.Beats)
	}
	if n := lines(t, filepath.Join(files, "steps")); n != 1 {
		t.Errorf("finalize step ran %d times", n)
	}
	if got, want := c.remoteRef(t, "refs/heads/feat"), refstoretest.Git(t, a.dir, "rev-parse", "feat"); got != want {
		t.Errorf("remote feat %q, want a's %s", got, want)
	}
}

// Machine a is cut off from the remote when its command ends: the beat
// that must fence its finalize step cannot land, a retries it for the
// TTL since its last good beat, then fails the job here without running
// the step. Healed, a's next pass settles that failure (unless b expired
// it first): the job ends failed on the remote either way, with no next
// job and no branch.
func TestSharedFinalizeFenceUnreachable(t *testing.T) {
	files := t.TempDir()
	ttl := 2 * time.Second
	c, srv := newHTTPCluster(t, 1, stepsToml(files), 100*time.Millisecond, ttl)
	a := c.ms[0]
	ctx := context.Background()
	id := c.claimOn(t, a)
	done := runAsync(a, id)
	waitFile(t, filepath.Join(files, "started"), 30*time.Second)
	srv.Partition(true)
	os.WriteFile(filepath.Join(files, "go"), nil, 0o644)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "could not reach the remote to fence finalize step 1") {
		t.Fatalf("a's run: %v, want failed: could not reach the remote to fence finalize step 1", err)
	}
	if n := lines(t, filepath.Join(files, "steps")); n != 0 {
		t.Errorf("the unfenced finalize step ran (%d)", n)
	}
	srv.Partition(false)
	rep, err := a.env.SharedPass(ctx, 0)
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("a's pass after the heal: %+v %v", rep, err)
	}
	rj, _ := remoteJob(t, a, id)
	if rj.Status != gitstate.Failed || rj.Next != "" {
		t.Fatalf("remote job: %s next %q (%s)", rj.Status, rj.Next, rj.Reason)
	}
	if len(rep.Settled) == 1 && !strings.Contains(rj.Reason, "could not reach the remote") {
		t.Errorf("settled reason %q", rj.Reason)
	}
	if ids := remoteJobs(t, a); len(ids) != 1 {
		t.Errorf("remote jobs %v", ids)
	}
}

// Machine a's monitor is killed (-9) mid-command; a's adopter (what a's
// dispatch or reaper starts) takes the run's claim from the remote,
// beats it, waits for the command, and settles the job: done, the next
// job created once, the branch pushed.
func TestSharedJobAdoptedAfterMonitorDies(t *testing.T) {
	files := t.TempDir()
	c := newCluster(t, 1, stepsToml(files), 100*time.Millisecond, 30*time.Second)
	a := c.ms[0]
	ctx := context.Background()
	id := c.claimOn(t, a)
	p := c.startSharedMonitor(t, a, id, "")
	waitFile(t, filepath.Join(files, "started"), 30*time.Second)
	// The command is stamped before the gate opens, so started means
	// stamped.
	p.Stop()
	lj, err := a.env.Store.Get(id)
	if err != nil || lj.Command.IsZero() {
		t.Fatalf("a's local job: %+v %v", lj, err)
	}
	beatsBefore, _ := remoteJob(t, a, id)
	adopted := make(chan error, 1)
	go func() {
		res, err := a.env.Adopt(ctx, id)
		if err == nil && res.Job.Status != gitstate.Done {
			err = fmt.Errorf("ended %s: %s", res.Job.Status, res.Job.Reason)
		}
		adopted <- err
	}()
	os.WriteFile(filepath.Join(files, "go"), nil, 0o644)
	if err := <-adopted; err != nil {
		t.Fatalf("adopt: %v", err)
	}
	rj, _ := remoteJob(t, a, id)
	if rj.Status != gitstate.Done || rj.Next == "" || rj.Beats <= beatsBefore.Beats {
		t.Fatalf("remote job: %s next %q beats %d (before the adoption %d)", rj.Status, rj.Next, rj.Beats, beatsBefore.Beats)
	}
	if n := lines(t, filepath.Join(files, "steps")); n != 1 {
		t.Errorf("finalize step ran %d times", n)
	}
	if got, want := c.remoteRef(t, "refs/heads/feat"), refstoretest.Git(t, a.dir, "rev-parse", "feat"); got != want {
		t.Errorf("remote feat %q, want a's %s", got, want)
	}
	if ids := remoteJobs(t, a); len(ids) != 2 {
		t.Errorf("remote jobs %v, want the job and its next", ids)
	}
}

// Two machines' passes racing for one queued job: exactly one claims it
// and queues it locally; the other has no local job.
func TestSharedClaimRace(t *testing.T) {
	c := newCluster(t, 3, counterToml(t.TempDir()), time.Second, 30*time.Second)
	ctx := context.Background()
	sj, _, err := c.ms[0].env.EnqueueShared(ctx, pipeline.Request{Branch: "feat"})
	if err != nil {
		t.Fatal(err)
	}
	type out struct {
		rep pipeline.SharedReport
		err error
	}
	res := make(chan out, len(c.ms))
	for _, m := range c.ms {
		go func() {
			rep, err := m.env.SharedPass(ctx, 1)
			res <- out{rep, err}
		}()
	}
	claimed := 0
	for range c.ms {
		o := <-res
		if o.err != nil || len(o.rep.Errors) > 0 {
			t.Errorf("pass: %v %v", o.err, o.rep.Errors)
		}
		claimed += len(o.rep.Claimed)
	}
	local := 0
	for _, m := range c.ms {
		if _, err := m.env.Store.Get(sj.ID); err == nil {
			local++
		}
	}
	rj, _ := remoteJob(t, c.ms[0], sj.ID)
	if claimed != 1 || local != 1 || rj.Status != gitstate.Running {
		t.Fatalf("claimed %d times, %d local jobs, remote %s; want one claim", claimed, local, rj.Status)
	}
}

// A machine whose branch has commits the remote's lacks claims the job
// but does not run it over them: the job is settled failed at once on the
// remote, saying so, nothing is queued here, and the local branch is
// untouched.
func TestSharedClaimRefusesDivergedBranch(t *testing.T) {
	c := newCluster(t, 2, counterToml(t.TempDir()), time.Second, 30*time.Second)
	a, b := c.ms[0], c.ms[1]
	ctx := context.Background()
	// The remote's feat, and a different feat on b.
	refstoretest.Git(t, a.dir, "checkout", "-q", "-b", "feat")
	refstoretest.Git(t, a.dir, "commit", "-q", "--allow-empty", "-m", "remote's")
	refstoretest.Git(t, a.dir, "push", "-q", "origin", "feat")
	refstoretest.Git(t, b.dir, "checkout", "-q", "-b", "feat")
	refstoretest.Git(t, b.dir, "commit", "-q", "--allow-empty", "-m", "b's own")
	refstoretest.Git(t, b.dir, "checkout", "-q", "main")
	bFeat := refstoretest.Git(t, b.dir, "rev-parse", "feat")

	sj, _, err := a.env.EnqueueShared(ctx, pipeline.Request{Branch: "feat"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.env.SharedPass(ctx, 1)
	if err != nil || len(rep.Errors) > 0 || len(rep.Claimed) != 0 {
		t.Fatalf("b's pass: claimed %v, %v %v", rep.Claimed, err, rep.Errors)
	}
	rj, _ := remoteJob(t, b, sj.ID)
	if rj.Status != gitstate.Failed || rj.Host != "b" || !strings.Contains(rj.Reason, "not an ancestor") || rj.Next != "" {
		t.Fatalf("remote job: %s on %s (%s) next %q", rj.Status, rj.Host, rj.Reason, rj.Next)
	}
	if _, err := b.env.Store.Get(sj.ID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("b queued the job locally: %v", err)
	}
	if got := refstoretest.Git(t, b.dir, "rev-parse", "feat"); got != bFeat {
		t.Errorf("b's feat moved: %s → %s", bFeat, got)
	}
}

// A cancel of a shared job stops here only this machine's run of it: a
// local job of the same id whose run is not the cancelled claim's is left
// as it is (the remote's cancel is not its end).
func TestSharedCancelLeavesOtherRun(t *testing.T) {
	c := newCluster(t, 1, counterToml(t.TempDir()), time.Second, 30*time.Second)
	a := c.ms[0]
	ctx := context.Background()
	id := c.claimOn(t, a)
	if _, err := a.env.Store.Update(ctx, id, "test: another run's record", func(j *gitstate.Job) error {
		j.SharedRun = "not-the-claim"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res, err := a.env.CancelShared(ctx, id)
	if err != nil || !res.Won || res.Local != nil {
		t.Fatalf("cancel: won %v, local %v, %v", res.Won, res.Local, err)
	}
	if lj, err := a.env.Store.Get(id); err != nil || lj.Status != gitstate.Queued {
		t.Fatalf("the other run's local job: %v, %v; want it left queued", lj.Status, err)
	}
	if rj, _ := remoteJob(t, a, id); rj.Status != gitstate.Cancelled {
		t.Fatalf("remote job %s, want cancelled", rj.Status)
	}
}
