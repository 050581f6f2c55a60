package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Shared is what an Env needs in remote mode: the shared queue, the shared
// merge leases, and how often a runner beats.
//
// A shared job runs on the machine that claimed it as a local job of the
// same id (the local record carries the run, SharedRun), through the
// local launcher, monitor, adoption and reaper. What differs: the monitor
// beats the shared record every Heartbeat and stops the job when it loses
// it; every finalize step is fenced by a beat; the terminal status, the
// next stage's job and the job's branch reach the remote in one atomic
// Settle; the local advance is not made (the next stage is queued on the
// remote, for any machine).
type Shared struct {
	Queue     *remotejob.Queue
	Leases    *remotelease.Manager
	Heartbeat time.Duration
	// SendToken sends the shared lease's token as a push option when a
	// merge stage pushes the target ([remote] server_hook).
	SendToken bool
}

// SharedReport is what one SharedPass did.
type SharedReport struct {
	// Claimed are the shared jobs this machine claimed and queued
	// locally, to be started by the local dispatch.
	Claimed []string
	// Expired are the running shared jobs this machine judged.
	Expired []remotejob.Expiry
	// Settled are local ends this machine pushed late (its monitor could
	// not reach the remote, or died between its local claim and Settle).
	Settled []string
	// Errors are per-job failures; the pass went on past each.
	Errors []error
}

// errSharedNoRemote: a job of the shared queue met by a process that is not in
// remote mode (no Env.Shared): it cannot reach the job's record.
var errSharedNoRemote = errors.New("the job belongs to the shared queue (remote mode), but this process has no [remote] configured")

// SharedPass is remote mode's part of dispatch, watch and reap: one Sync;
// Expire; settle repair of this machine's local ends; then claims queued
// shared jobs, oldest first, while this machine runs fewer than capacity
// jobs, each becoming a local queued job that the caller's dispatch
// starts. Nothing is claimed when capacity is 0 (reap).
//
// Settle repair: a running shared job of this machine (its Host) whose
// local job of the same run has ended is settled again from the local
// record (Settle converges); one with no local job at all — this machine
// died between the claim on the remote and the local record — gets its
// local job now. Passes of one repository exclude each other (a lock), so
// a claim and its materialization are never seen half-done by another.
//
// A branch that cannot be brought here without losing commits (this
// clone's branch is not an ancestor of the remote's) does not stop the
// claim: the job is settled failed at once, saying so, and runs nowhere.
func (e *Env) SharedPass(ctx context.Context, capacity int) (SharedReport, error) {
	var rep SharedReport
	if e.Shared == nil || e.Shared.Queue == nil {
		return rep, errSharedNoRemote
	}
	q := e.Shared.Queue
	unlock, err := statefile.Lock(ctx, e.Store.LockPath("shared"))
	if err != nil {
		return rep, fmt.Errorf("shared pass: %w", err)
	}
	defer unlock()
	if err := q.Sync(ctx); err != nil {
		return rep, fmt.Errorf("shared pass: %w", err)
	}
	exp, err := q.Expire(ctx)
	rep.Expired = exp
	for _, x := range exp {
		switch {
		case x.Won:
			e.note(x.ID, gitstate.Running, gitstate.Failed, fmt.Sprintf("expired the shared job of %s: its record unchanged for %s as seen here", x.Host, x.Unchanged.Round(time.Second)))
		case x.Err != nil:
			rep.Errors = append(rep.Errors, fmt.Errorf("expire %s (of %s): %w", x.ID, x.Host, x.Err))
		}
	}
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Errorf("expire: %w", err))
	}
	entries, err := q.List(ctx)
	if err != nil {
		return rep, fmt.Errorf("shared pass: %w", err)
	}
	// Settle repair, and materialization of claims whose local record a
	// crash lost.
	for _, ent := range entries {
		if ent.Err != nil || ent.Job == nil || ent.Job.Status != gitstate.Running || ent.Job.Host != q.Host {
			continue
		}
		rj := ent.Job
		local, err := e.Store.Get(rj.ID)
		switch {
		case errors.Is(err, gitstate.ErrNotFound):
			if collected, cerr := e.Store.Collected(rj.ID); cerr != nil || collected {
				continue
			}
			c := &remotejob.Claimed{Job: *rj, VersionID: ent.VersionID}
			if made, err := e.materialize(ctx, c); err != nil {
				rep.Errors = append(rep.Errors, fmt.Errorf("%s: claimed here (run %s) but not queued here: %w", rj.ID, rj.Run, err))
			} else if made {
				rep.Claimed = append(rep.Claimed, rj.ID)
			}
		case err != nil:
			rep.Errors = append(rep.Errors, fmt.Errorf("%s: %w", rj.ID, err))
		case local.SharedRun != rj.Run:
			// Not this machine's run of it (a local-mode job of the same
			// id, or a record from before): not ours to settle.
		case local.Status.Terminal():
			settled, err := e.settleShared(ctx, local)
			if err != nil && !errors.Is(err, remotejob.ErrLost) {
				rep.Errors = append(rep.Errors, fmt.Errorf("%s: settle: %w", rj.ID, err))
			}
			if settled {
				rep.Settled = append(rep.Settled, rj.ID)
			}
		}
	}
	if capacity <= 0 {
		return rep, nil
	}
	act, err := e.Store.Active()
	if err != nil {
		return rep, fmt.Errorf("shared pass: %w", err)
	}
	mine := 0
	for _, j := range act.Jobs {
		if j.SharedRun != "" && (j.Status == gitstate.Queued || j.Status == gitstate.Running) {
			mine++
		}
	}
	for _, ent := range entries {
		if mine >= capacity {
			break
		}
		if ent.Err != nil || ent.Job == nil || ent.Job.Status != gitstate.Queued {
			continue
		}
		id := ent.Job.ID
		if _, err := e.Store.Get(id); err == nil {
			rep.Errors = append(rep.Errors, fmt.Errorf("%s: not claimed: this clone has a local job of the same id; a job id runs once", id))
			continue
		} else if !errors.Is(err, gitstate.ErrNotFound) {
			rep.Errors = append(rep.Errors, fmt.Errorf("%s: not claimed: %w", id, err))
			continue
		}
		if collected, err := e.Store.Collected(id); err != nil || collected {
			continue
		}
		made, err := e.claimShared(ctx, id)
		switch {
		case errors.Is(err, remotejob.ErrTaken):
			continue
		case err != nil:
			rep.Errors = append(rep.Errors, fmt.Errorf("%s: %w", id, err))
			if errors.Is(err, refstore.ErrUnreachable) {
				return rep, nil
			}
			continue
		}
		if made {
			rep.Claimed = append(rep.Claimed, id)
			mine++
		}
	}
	return rep, nil
}

// ClaimShared claims shared job id for this machine and queues it here as a
// local job of the same id (what `run JOB` does in remote mode before
// running it). The local job is returned; a job that could not be brought
// here (its branch, see SharedPass) is settled failed on the remote, and
// the error says why. remotejob.ErrTaken (wrapped) when it is not queued.
func (e *Env) ClaimShared(ctx context.Context, id string) (*gitstate.Job, error) {
	if e.Shared == nil || e.Shared.Queue == nil {
		return nil, errSharedNoRemote
	}
	unlock, err := statefile.Lock(ctx, e.Store.LockPath("shared"))
	if err != nil {
		return nil, fmt.Errorf("claim %s: %w", id, err)
	}
	defer unlock()
	if err := e.Shared.Queue.Sync(ctx); err != nil {
		return nil, fmt.Errorf("claim %s: %w", id, err)
	}
	made, err := e.claimShared(ctx, id)
	if err != nil {
		return nil, err
	}
	if !made {
		return nil, fmt.Errorf("claim %s: claimed on the remote, but its branch could not be brought here; the job was settled failed (orch-hooks show %s)", id, id)
	}
	return e.Store.Get(id)
}

// claimShared is one claim on the remote and its materialization here.
func (e *Env) claimShared(ctx context.Context, id string) (bool, error) {
	c, err := e.Shared.Queue.Claim(ctx, id)
	if err != nil {
		return false, fmt.Errorf("claim %s: %w", id, err)
	}
	crashpoint.Hit("shared.claimed")
	return e.materialize(ctx, c)
}

// materialize makes claimed shared job c a local queued job of the same id
// carrying its run: the job's branch is brought here first from the
// remote when the remote has it (only as a fast-forward of this clone's
// branch, never over local commits). made is false when the branch could
// not be brought (diverged): the job is then settled failed on the
// remote, with the reason, and nothing is queued here. An error (the
// remote unreachable) leaves the claim as it is: the next pass finds the
// job running here with no local job and tries again. A local record of
// the id that exists already is an error: it is not this claim's.
func (e *Env) materialize(ctx context.Context, c *remotejob.Claimed) (made bool, err error) {
	rj := c.Job
	reason, err := e.bringBranch(ctx, rj.Branch, rj.Target)
	if err != nil {
		return false, err
	}
	if reason != "" {
		e.note(rj.ID, gitstate.Queued, gitstate.Running, fmt.Sprintf("claimed the shared job (run %s), but %s", rj.Run, reason))
		if err := e.Shared.Queue.Settle(ctx, c, remotejob.Ending{Status: gitstate.Failed, Reason: reason}); err != nil {
			return false, fmt.Errorf("settle failed (%s): %w", reason, err)
		}
		e.note(rj.ID, gitstate.Running, gitstate.Failed, "settled on the remote: "+reason)
		return false, nil
	}
	_, created, err := e.Store.Create(&gitstate.Job{
		ID: rj.ID, Task: rj.Task, Stage: rj.Stage, Branch: rj.Branch, Target: rj.Target,
		Attempt: rj.Attempt, Status: gitstate.Queued, PrevCommit: rj.PrevCommit, SharedRun: rj.Run,
	})
	if err != nil {
		return false, fmt.Errorf("queue the claimed job here: %w", err)
	}
	crashpoint.Hit("shared.materialized")
	if !created {
		// Callers claim only with no local record of the id (under the
		// shared lock), so this is a record made behind their back: it is
		// not this run, and the claim is not run here.
		return false, fmt.Errorf("a local job %s exists here already, not of this claim (run %s): the claim is not run here, and another machine expires it after heartbeat_ttl_s", rj.ID, rj.Run)
	}
	// The remote's transition; the local record's own creation (→queued)
	// is logged by the store.
	e.note(rj.ID, gitstate.Queued, gitstate.Running, fmt.Sprintf("claimed the shared job on %s (run %s); queued here as a local job", e.Shared.Queue.Store.Remote(), rj.Run))
	return true, nil
}

// remoteName is the remote shared jobs live on.
func (e *Env) remoteName() string { return e.Shared.Queue.Store.Remote() }

// remoteBranch returns the commit of branch on the remote, "" when the
// remote has no such branch, fetching it into refs/remotes/<remote>/ so
// its commits are here to compare.
func (e *Env) remoteBranch(ctx context.Context, branch string) (string, error) {
	remote := e.remoteName()
	ref := "refs/heads/" + branch
	out, err := gitstate.Git(ctx, e.Repo.CommonDir, "ls-remote", "--end-of-options", remote, ref)
	if err != nil {
		return "", fmt.Errorf("read %s on %s: %w: %v", ref, remote, refstore.ErrUnreachable, err)
	}
	var id string
	for _, line := range strings.Split(out, "\n") {
		if sha, name, ok := strings.Cut(strings.TrimSpace(line), "\t"); ok && name == ref {
			id = sha
		}
	}
	if id == "" {
		return "", nil
	}
	if _, err := e.Repo.ResolveCommit(ctx, id); err != nil {
		if _, err := gitstate.Git(ctx, e.Repo.CommonDir, "fetch", "--quiet", "--no-tags", "--end-of-options", remote,
			"+"+ref+":"+e.trackingRef(branch)); err != nil {
			return "", fmt.Errorf("fetch %s from %s: %w: %v", ref, remote, refstore.ErrUnreachable, err)
		}
	}
	return id, nil
}

func (e *Env) trackingRef(branch string) string {
	return "refs/remotes/" + e.remoteName() + "/" + branch
}

// bringBranch brings the remote's branch here before a claimed job runs:
// created when absent here (from the remote's branch, or from the
// remote's target when the remote has no branch either), fast-forwarded
// when this clone's is behind (in its worktree when one has it checked
// out). reason is set, and nothing changed, when this clone's branch is
// not an ancestor of the remote's: local commits are never overwritten.
func (e *Env) bringBranch(ctx context.Context, branch, target string) (reason string, err error) {
	rb, err := e.remoteBranch(ctx, branch)
	if err != nil {
		return "", err
	}
	ref := "refs/heads/" + branch
	lb, lerr := e.Repo.ResolveCommit(ctx, ref)
	if rb == "" {
		if lerr == nil {
			return "", nil // the job's settle pushes it
		}
		// As a local job would have it: from the target, the remote's
		// when it has one (this clone's may be behind).
		tb, err := e.remoteBranch(ctx, target)
		if err != nil || tb == "" {
			return "", err // EnsureWorktree makes it from the local target
		}
		_, err = gitstate.Git(ctx, e.Repo.CommonDir, "update-ref", "-m", "orch-hooks: shared job's branch, from "+e.remoteName()+"/"+target, ref, tb, "")
		return "", err
	}
	switch {
	case lerr != nil:
		_, err = gitstate.Git(ctx, e.Repo.CommonDir, "update-ref", "-m", "orch-hooks: shared job's branch, from "+e.remoteName(), ref, rb, "")
		return "", err
	case lb == rb:
		return "", nil
	}
	behind, err := e.Repo.IsAncestor(ctx, lb, rb)
	if err != nil {
		return "", err
	}
	if !behind {
		return fmt.Sprintf("branch %s here (%s) is not an ancestor of %s's (%s): this clone has commits the remote lacks, and they are not overwritten; push or move them, then orch-hooks retry the job",
			branch, shortID(lb), e.remoteName(), shortID(rb)), nil
	}
	if wt, _ := e.worktreeOf(ctx, branch); wt != "" {
		_, err = gitstate.Git(ctx, wt, "merge", "--ff-only", "--quiet", rb)
		if err != nil {
			return "", fmt.Errorf("fast-forward %s in %s to %s's %s: %w", branch, wt, e.remoteName(), shortID(rb), err)
		}
		return "", nil
	}
	_, err = gitstate.Git(ctx, e.Repo.CommonDir, "update-ref", "-m", "orch-hooks: shared job's branch, fast-forward from "+e.remoteName(), ref, rb, lb)
	return "", err
}

// branchPush is the push of job j's branch that lands with its Settle:
// nil when the remote has it already (or this clone has no branch),
// moved set when the remote's branch is not an ancestor of this clone's
// (someone pushed to it meanwhile): it is then not pushed.
func (e *Env) branchPush(ctx context.Context, j *gitstate.Job) (up *refstore.Update, moved string, err error) {
	lb, lerr := e.Repo.ResolveCommit(ctx, "refs/heads/"+j.Branch)
	if lerr != nil {
		return nil, "", nil
	}
	rb, err := e.remoteBranch(ctx, j.Branch)
	if err != nil {
		return nil, "", err
	}
	if rb == lb {
		return nil, "", nil
	}
	if rb != "" {
		ok, err := e.Repo.IsAncestor(ctx, rb, lb)
		if err != nil {
			return nil, "", err
		}
		if !ok {
			return nil, fmt.Sprintf("branch moved on the remote: %s's %s is at %s, which this clone's %s (%s) does not contain; the job's work was not pushed",
				e.remoteName(), j.Branch, shortID(rb), j.Branch, shortID(lb)), nil
		}
	}
	return &refstore.Update{Ref: "refs/heads/" + j.Branch, Old: rb, New: lb}, "", nil
}

// lostError is a shared job that is no longer this run's.
func lostError(id, run string, cur *remotejob.Job) error {
	switch {
	case cur == nil:
		return fmt.Errorf("shared job %s is gone from the remote: %w", id, remotejob.ErrLost)
	case cur.Status == gitstate.Running:
		return fmt.Errorf("shared job %s runs as run %s on %s, not as this run %s: %w", id, cur.Run, cur.Host, run, remotejob.ErrLost)
	default:
		by := cur.EndedBy
		if by == "" {
			by = "?"
		}
		return fmt.Errorf("shared job %s is %s on the remote (by %s: %s): %w", id, cur.Status, by, cur.Reason, remotejob.ErrLost)
	}
}

// sharedClaimed reconstructs the claim of run on shared job id from the
// remote (a monitor's start, an adopter, a late settle): Sync, then the
// record must be running with that run. cur is the record as read (nil
// when there is none); the error wraps remotejob.ErrLost when it is not
// this run's any more (c is then still set when the record names this
// run but has ended), refstore.ErrUnreachable when the remote could not
// be read.
func (e *Env) sharedClaimed(ctx context.Context, id, run string) (c *remotejob.Claimed, cur *remotejob.Job, err error) {
	q := e.Shared.Queue
	if err := q.Sync(ctx); err != nil {
		return nil, nil, err
	}
	ent, err := q.Get(ctx, id)
	if errors.Is(err, remotejob.ErrNotFound) {
		return nil, nil, lostError(id, run, nil)
	}
	if err != nil {
		return nil, nil, err
	}
	if ent.Err != nil {
		return nil, nil, fmt.Errorf("shared job %s: %w", id, ent.Err)
	}
	c = &remotejob.Claimed{Job: *ent.Job, VersionID: ent.VersionID}
	switch {
	case ent.Job.Run != run:
		return nil, ent.Job, lostError(id, run, ent.Job)
	case ent.Job.Status != gitstate.Running:
		// Ended, with this run's id still in it: c lets a late settle ask
		// Settle whether the end is its own (Settle converges).
		return c, ent.Job, lostError(id, run, ent.Job)
	}
	return c, ent.Job, nil
}

// settleShared pushes the end of shared job j, terminal here, to the
// remote: its status and reason, the next stage's job (when done) and its
// branch (a fast-forward of the remote's), in one Settle. settled is true
// when that landed now or had landed before (the remote shows it ended by
// this run). An error wrapping remotejob.ErrLost means another machine
// ended it: recorded as an event, nothing written. Any other error leaves
// it for the settle repair of the next SharedPass.
func (e *Env) settleShared(ctx context.Context, j *gitstate.Job) (settled bool, err error) {
	stopRunner(e, j.ID)
	if e.Shared == nil || e.Shared.Queue == nil {
		return false, errSharedNoRemote
	}
	c, cur, err := e.sharedClaimed(ctx, j.ID, j.SharedRun)
	if errors.Is(err, remotejob.ErrLost) {
		if c != nil && cur.EndedByRunner() {
			return true, nil // an earlier settle of this run landed
		}
		e.note(j.ID, gitstate.Running, j.Status, fmt.Sprintf("lost the shared job, nothing written to the remote: %v", err))
		return false, err
	}
	if err != nil {
		return false, err
	}
	if j.Status == gitstate.Cancelled {
		_, won, err := e.Shared.Queue.Cancel(ctx, j.ID, j.Reason)
		if err == nil && won {
			e.note(j.ID, gitstate.Running, gitstate.Cancelled, "cancelled on the remote: "+j.Reason)
		}
		return err == nil, err
	}
	end := remotejob.Ending{Status: j.Status, Reason: j.Reason, ExitCode: j.ExitCode, Gates: j.Gates}
	up, moved, err := e.branchPush(ctx, j)
	if err != nil {
		return false, err
	}
	switch {
	case moved != "" && end.Status == gitstate.Done:
		// Checked before the local claim too (Finalize); this is the race
		// after it. The remote's record says what happened.
		end.Status, end.Reason = gitstate.Failed, moved
	case up != nil:
		end.Extra = []refstore.Update{*up}
	}
	stage, ok := e.Config.Stage(j.Stage)
	if end.Status == gitstate.Done && ok && stage.Next != "" {
		end.Next = &remotejob.Job{
			Version: 1, ID: gitstate.JobID(j.Task, stage.Next, j.Attempt), Task: j.Task, Stage: stage.Next,
			Branch: j.Branch, Target: j.Target, Attempt: j.Attempt, Status: gitstate.Queued,
			CreatedAt: time.Now().UTC(), PrevCommit: JudgedCommit(j.Gates),
		}
	}
	err = e.Shared.Queue.Settle(ctx, c, end)
	if errors.Is(err, remotejob.ErrLost) {
		e.note(j.ID, gitstate.Running, j.Status, fmt.Sprintf("lost the shared job before its settle, nothing written to the remote: %v", err))
		return false, err
	}
	if err != nil {
		return false, err
	}
	crashpoint.Hit("shared.settled")
	msg := fmt.Sprintf("settled on the remote: %s (%s)", end.Status, end.Reason)
	if end.Next != nil {
		msg += "; next: " + end.Next.ID + " queued on the remote"
	}
	if up != nil && end.Extra != nil {
		msg += fmt.Sprintf("; pushed %s at %s", j.Branch, shortID(up.New))
	}
	e.note(j.ID, gitstate.Running, end.Status, msg)
	return true, nil
}

// branchMovedReason is Finalize's check, before the local terminal claim
// of a shared job that would end done, that its branch can still land on
// the remote as a fast-forward; "" when it can (or the remote cannot be
// read now: the settle checks again).
func (e *Env) branchMovedReason(ctx context.Context, j *gitstate.Job) string {
	if e.Shared == nil || e.Shared.Queue == nil {
		return ""
	}
	_, moved, _ := e.branchPush(ctx, j)
	return moved
}

// note records what remote mode did to shared job id in the event log.
func (e *Env) note(id string, from, to gitstate.Status, reason string) {
	actor := "shared"
	if e.Shared != nil && e.Shared.Queue != nil {
		actor += "@" + e.Shared.Queue.Host
	}
	e.Store.Note(gitstate.Transition{Job: id, Actor: actor, From: from, To: to, Reason: reason})
}

// sharedRunner beats the record of one shared job for its monitor (or
// adopter): every Heartbeat from a goroutine, and on demand as the fence
// of a finalize step.
type sharedRunner struct {
	e        *Env
	id       string
	mu       sync.Mutex // one write at a time; guards c, lastGood, progress, lost
	c        *remotejob.Claimed
	lastGood time.Time
	progress string
	lost     error

	stopOnce sync.Once
	stopped  chan struct{} // closed by stop
	exited   chan struct{} // closed when the loop has returned
	handled  chan struct{} // closed once onLost has run (or never will)
}

// runners are the live sharedRunners of this process, by store and job:
// Finalize stops a job's beats before its settle.
var runners sync.Map

func runnerKey(e *Env, id string) string { return e.Store.Dir() + "\x00" + id }

func stopRunner(e *Env, id string) {
	if r, ok := runners.Load(runnerKey(e, id)); ok {
		r.(*sharedRunner).stop()
	}
}

// startShared reconstructs the claim of shared job j (running here) from
// the remote, waiting out an unreachable remote up to the TTL, and
// starts its beats; onLost runs once if a beat finds the job lost. The
// error wraps remotejob.ErrLost, or says the remote stayed unreachable.
func (e *Env) startShared(ctx context.Context, j *gitstate.Job, onLost func(error)) (*sharedRunner, error) {
	if e.Shared == nil || e.Shared.Queue == nil {
		return nil, errSharedNoRemote
	}
	ttl := e.Shared.Queue.TTL
	start := time.Now()
	backoff := 100 * time.Millisecond
	for {
		c, _, err := e.sharedClaimed(ctx, j.ID, j.SharedRun)
		if err == nil {
			r := &sharedRunner{e: e, id: j.ID, c: c, lastGood: time.Now(), progress: "started",
				stopped: make(chan struct{}), exited: make(chan struct{}), handled: make(chan struct{})}
			runners.Store(runnerKey(e, j.ID), r)
			go r.loop(ctx, onLost)
			return r, nil
		}
		if !errors.Is(err, refstore.ErrUnreachable) || time.Since(start)+backoff >= ttl {
			if errors.Is(err, refstore.ErrUnreachable) {
				return nil, fmt.Errorf("could not reach the remote to read shared job %s for %s; another machine may have expired it: %w", j.ID, ttl, err)
			}
			return nil, err
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// setProgress is what the next beat says the runner is doing.
func (r *sharedRunner) setProgress(p string) {
	r.mu.Lock()
	r.progress = p
	r.mu.Unlock()
}

// beatLocked writes one beat; r.mu is held.
func (r *sharedRunner) beatLocked(ctx context.Context) error {
	if r.lost != nil {
		return r.lost
	}
	err := r.e.Shared.Queue.Beat(ctx, r.c, r.progress)
	switch {
	case err == nil:
		crashpoint.Hit("shared.beat_pushed")
		r.lastGood = time.Now()
	case errors.Is(err, remotejob.ErrLost):
		r.lost = err
	}
	return err
}

// fence is the beat right before a side effect (a finalize step, a
// merge's push): nil once a beat landed; an error wrapping
// remotejob.ErrLost when the job is not this run's any more; an error
// saying so when the remote stayed unreachable for the TTL since the last
// good beat (retried with a backoff until then).
func (r *sharedRunner) fence(ctx context.Context, progress string, what string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = progress
	ttl := r.e.Shared.Queue.TTL
	backoff := 100 * time.Millisecond
	for {
		err := r.beatLocked(ctx)
		if err == nil || errors.Is(err, remotejob.ErrLost) {
			return err
		}
		left := ttl - time.Since(r.lastGood)
		if left <= 0 {
			return fmt.Errorf("could not reach the remote to fence %s for %s; another machine may have expired it: %w", what, ttl, err)
		}
		time.Sleep(min(backoff, left))
		backoff = min(2*backoff, 2*time.Second)
	}
}

// loop beats every Heartbeat until stop, or until a beat finds the job
// lost: then onLost runs (in its own goroutine, so that it may end the job
// and stop this runner).
func (r *sharedRunner) loop(ctx context.Context, onLost func(error)) {
	defer close(r.exited)
	every := r.e.Shared.Heartbeat
	if every <= 0 {
		every = remotejob.HeartbeatDefault
	}
	// A full interval between the end of one beat and the start of the
	// next (not a ticker): a slow push never makes the beats back to back,
	// which would leave a cancel or an expiry no gap for its own
	// compare-and-swap.
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-r.stopped:
			close(r.handled)
			return
		case <-t.C:
		}
		r.mu.Lock()
		select {
		case <-r.stopped:
			r.mu.Unlock()
			close(r.handled)
			return
		default:
		}
		err := r.beatLocked(ctx)
		r.mu.Unlock()
		t.Reset(every)
		if errors.Is(err, remotejob.ErrLost) {
			go func() {
				defer close(r.handled)
				if onLost != nil {
					onLost(err)
				}
			}()
			return
		}
	}
}

// stop ends the beats (no beat is written after it returns).
func (r *sharedRunner) stop() {
	r.stopOnce.Do(func() {
		close(r.stopped)
		runners.CompareAndDelete(runnerKey(r.e, r.id), r)
	})
	// A beat in flight finishes first (it holds mu), and the loop exits.
	<-r.exited
}

// close is stop, then waits for a lost job's handling to finish: the
// monitor returns only once the job's local end is recorded.
func (r *sharedRunner) close() {
	r.stop()
	<-r.handled
}

// loseShared ends running job id here failed because its shared job is no
// longer this run's (reason says why), and stops its processes as cancel
// does: claim first, then TERM/KILL by identity.
func (e *Env) loseShared(ctx context.Context, id, reason string, say func(string, ...any)) (Result, error) {
	say("%s", reason)
	res, err := e.Finalize(ctx, id, Ending{EndedBy: gitstate.EndedByMonitor, Failure: reason})
	if err == nil && res.Won {
		if serr := StopGroups(res.Job, killGrace); serr != nil {
			say("stop the job's processes: %v", serr)
		}
	}
	return res, err
}
