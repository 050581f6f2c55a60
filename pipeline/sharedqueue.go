package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
)

// The user's side of the shared queue (remote mode): enqueue, retry,
// cancel and the status of jobs whose records live on the remote. Each
// reads the remote once (Sync) and writes only through remotejob's
// compare-and-swaps.

// errNoShared is a caller's mistake: these operations are for remote mode.
var errNoShared = errors.New("pipeline: not in remote mode (Env.Shared is nil)")

// SyncShared brings the shared queue into the local mirror: one fetch.
// An unreachable remote is said with the way out.
func (e *Env) SyncShared(ctx context.Context) error {
	if e.Shared == nil {
		return errNoShared
	}
	return e.sharedErr(e.Shared.Queue.Sync(ctx))
}

// UnreachableError is remote mode's remote not answering: git's own
// words, and the way out.
type UnreachableError struct {
	Remote string
	Config string // the orch.toml that names it
	Git    string // git's first "fatal:" line, or the whole error
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("remote %s unreachable: %s; the shared job queue is there ([remote] name in %s): check that git fetch %s works from here (network, URL: git remote get-url %s, credentials), or remove [remote] name to work on this machine's local state alone",
		e.Remote, e.Git, e.Config, e.Remote, e.Remote)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// sharedErr says a failure to reach the remote with the fix.
func (e *Env) sharedErr(err error) error {
	if err == nil || !errors.Is(err, refstore.ErrUnreachable) {
		return err
	}
	msg := err.Error()
	if i := strings.Index(msg, "fatal: "); i >= 0 {
		msg, _, _ = strings.Cut(msg[i:], "\n")
	}
	return &UnreachableError{Remote: e.Shared.Queue.Store.Remote(), Config: e.configName(), Git: strings.TrimSpace(msg), Err: err}
}

// sharedNotFound is the error for a job id the remote does not have.
func (e *Env) sharedNotFound(id string) error {
	return fmt.Errorf("%w: %s on remote %s; run orch-hooks status for the ids", remotejob.ErrNotFound, id, e.Shared.Queue.Store.Remote())
}

// ErrLocalID refuses a shared job whose id this machine's local state
// already holds (a job made before remote mode was turned on): this
// machine could never run it as the shared job, and a job id runs once.
var ErrLocalID = errors.New("the job id is taken by this machine's local state")

// EnqueueShared creates r's job, queued, on the shared queue (defaults and
// checks as Enqueue), or finds it: created is false when the remote has
// the id already, and the job is the remote's. It reads the remote once.
func (e *Env) EnqueueShared(ctx context.Context, r Request) (j *remotejob.Job, created bool, err error) {
	if e.Shared == nil {
		return nil, false, errNoShared
	}
	r, err = e.request(r)
	if err != nil {
		return nil, false, err
	}
	q := e.Shared.Queue
	if err := e.SyncShared(ctx); err != nil {
		return nil, false, err
	}
	id := gitstate.JobID(r.Task, r.Stage, r.Attempt)
	if ent, err := q.Get(ctx, id); err == nil {
		if ent.Err != nil {
			return nil, false, ent.Err
		}
		return ent.Job, false, nil
	} else if !errors.Is(err, remotejob.ErrNotFound) {
		return nil, false, err
	}
	if err := e.localIDFree(ctx, r); err != nil {
		return nil, false, err
	}
	j = &remotejob.Job{
		Version: 1, ID: id, Task: r.Task, Stage: r.Stage, Branch: r.Branch, Target: r.Target,
		Attempt: r.Attempt, Status: gitstate.Queued, CreatedAt: q.Now().UTC(),
	}
	created, err = q.Enqueue(ctx, *j)
	if err != nil {
		return nil, false, e.sharedErr(err)
	}
	if !created {
		// Another machine created it between the read and the write.
		if err := e.SyncShared(ctx); err != nil {
			return nil, false, err
		}
		ent, err := q.Get(ctx, id)
		if err != nil {
			return nil, false, err
		}
		if ent.Err != nil {
			return nil, false, ent.Err
		}
		return ent.Job, false, nil
	}
	return j, true, nil
}

// localIDFree refuses r's id when this machine's local state holds it
// (a job of before remote mode, or its tombstone), naming the first
// attempt free both here and on the remote (as of the last Sync).
func (e *Env) localIDFree(ctx context.Context, r Request) error {
	taken := func(a int) (bool, error) {
		id := gitstate.JobID(r.Task, r.Stage, a)
		if _, err := e.Store.Get(id); err == nil {
			return true, nil
		} else if !errors.Is(err, gitstate.ErrNotFound) {
			return false, err
		}
		return e.Store.Collected(id)
	}
	t, err := taken(r.Attempt)
	if err != nil || !t {
		return err
	}
	id := gitstate.JobID(r.Task, r.Stage, r.Attempt)
	msg := fmt.Errorf("%w: job %s is in this machine's local state (%s), made before remote mode; a job id runs at most once",
		ErrLocalID, id, e.Store.RecordPath(id))
	for a := r.Attempt + 1; a < r.Attempt+maxAttemptProbe; a++ {
		t, err := taken(a)
		if err != nil {
			return fmt.Errorf("%w (and finding a free attempt: %v)", msg, err)
		}
		if _, err := e.Shared.Queue.Get(ctx, gitstate.JobID(r.Task, r.Stage, a)); !t && errors.Is(err, remotejob.ErrNotFound) {
			return fmt.Errorf("%w; enqueue attempt %d instead: --attempt %d", msg, a, a)
		}
	}
	return msg
}

// RetryShared creates attempt+1 of shared job id, which must have ended
// failed or cancelled (ErrWrongStatus otherwise), on the shared queue.
// created is false when that attempt exists already.
func (e *Env) RetryShared(ctx context.Context, id string) (j *remotejob.Job, created bool, err error) {
	if e.Shared == nil {
		return nil, false, errNoShared
	}
	if err := e.SyncShared(ctx); err != nil {
		return nil, false, err
	}
	ent, err := e.Shared.Queue.Get(ctx, id)
	if errors.Is(err, remotejob.ErrNotFound) {
		return nil, false, e.sharedNotFound(id)
	}
	if err != nil {
		return nil, false, err
	}
	if ent.Err != nil {
		return nil, false, ent.Err
	}
	old := ent.Job
	if old.Status != gitstate.Failed && old.Status != gitstate.Cancelled {
		return old, false, fmt.Errorf("job %s is %s: %w: only a failed or cancelled job can be retried", id, old.Status, ErrWrongStatus)
	}
	return e.EnqueueShared(ctx, Request{Task: old.Task, Stage: old.Stage, Branch: old.Branch, Target: old.Target, Attempt: old.Attempt + 1})
}

// SharedCancel is what CancelShared did.
type SharedCancel struct {
	// Job is the shared job as the cancel left it, or as found when it had
	// ended already (Won false).
	Job *remotejob.Job
	Won bool
	// Local is this machine's local job of the same id when it was
	// queued or running here and was cancelled here too (its processes
	// stopped as cancel stops them); nil when the job was not this
	// machine's to stop.
	Local *gitstate.Job
}

// CancelShared cancels shared job id on the remote (the authority: once
// it is cancelled there, its runner's next beat or settle loses) and, when
// the job is queued or running on this machine, cancels its local job as
// Cancel does, stopping its processes. A job of another machine is left to
// its runner, which stops at its next beat. Not won (Won false, no error)
// when the job had ended.
func (e *Env) CancelShared(ctx context.Context, id string) (SharedCancel, error) {
	if e.Shared == nil {
		return SharedCancel{}, errNoShared
	}
	q := e.Shared.Queue
	if err := e.SyncShared(ctx); err != nil {
		return SharedCancel{}, err
	}
	if _, err := q.Get(ctx, id); errors.Is(err, remotejob.ErrNotFound) {
		return SharedCancel{}, e.sharedNotFound(id)
	}
	j, won, err := q.Cancel(ctx, id, "cancelled by user")
	if err != nil {
		return SharedCancel{}, e.sharedErr(err)
	}
	res := SharedCancel{Job: j, Won: won}
	if !won {
		return res, nil
	}
	lj, err := e.Store.Get(id)
	if errors.Is(err, gitstate.ErrNotFound) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("job %s cancelled on %s; its local record here: %w", id, q.Store.Remote(), err)
	}
	if lj.Status.Terminal() || j.Run == "" || lj.SharedRun != j.Run {
		// Only this machine's run of the cancelled claim is stopped here:
		// a local job of the same id that is not that run is someone
		// else's to end.
		return res, nil
	}
	lj, lwon, err := e.Cancel(ctx, id)
	if lwon {
		res.Local = lj
	}
	if err != nil {
		return res, fmt.Errorf("job %s cancelled on %s; cancelling it here: %w", id, q.Store.Remote(), err)
	}
	return res, nil
}

// SharedJob is one job of the shared queue as this machine sees it.
type SharedJob struct {
	remotejob.Entry
	// Local is this machine's record of the job when it ran (or runs)
	// here; nil otherwise.
	Local *gitstate.Job
	// Unchanged is, for a running job, how long this machine has seen its
	// current version unchanged (by its own clock); Seen is false when it
	// has no observation of that version (no reaper pass or watch here
	// since it was written).
	Unchanged time.Duration
	Seen      bool
}

// SharedStatus is the shared queue as one Sync found it, with this
// machine's part.
type SharedStatus struct {
	Remote string
	Host   string
	// FirstUse: the remote holds no refs/orch/ record at all yet (no job
	// was ever enqueued and no lease taken through it).
	FirstUse bool
	// Jobs: running, then queued (oldest first), then ended (most recent
	// first); without all, only the recent ended ones.
	Jobs   []SharedJob
	Leases []*remotelease.Lease
	// LocalOnly are jobs of this machine's local state that the remote
	// does not have (made before remote mode was turned on).
	LocalOnly  []*gitstate.Job
	Unreadable []*gitstate.UnreadableError
}

// observe fills sj's sighting: how long this machine has seen a running
// job's current version unchanged (remotejob.Queue.Seen). A failure to
// read the sightings leaves it unknown: status still shows the job.
func observe(q *remotejob.Queue, sj *SharedJob) {
	if sj.Job.Status == gitstate.Running {
		sj.Unchanged, sj.Seen, _ = q.Seen(sj.Job.ID, sj.VersionID)
	}
}

// SharedStatusOf reads the shared queue (one Sync) and this machine's
// part of it: every active shared job, and the recentEnded most recently
// ended ones (all with all).
func (e *Env) SharedStatusOf(ctx context.Context, recentEnded int, all bool) (*SharedStatus, error) {
	if e.Shared == nil {
		return nil, errNoShared
	}
	if err := e.SyncShared(ctx); err != nil {
		return nil, err
	}
	return e.SharedMirror(ctx, recentEnded, all)
}

// SharedMirror is SharedStatusOf without its fetch: the shared queue as
// this machine's last Sync (a SharedPass's, for watch) left it.
func (e *Env) SharedMirror(ctx context.Context, recentEnded int, all bool) (*SharedStatus, error) {
	if e.Shared == nil {
		return nil, errNoShared
	}
	q := e.Shared.Queue
	st := &SharedStatus{Remote: q.Store.Remote(), Host: q.Host}
	recs, err := q.Store.List(ctx, "")
	if err != nil {
		return nil, err
	}
	st.FirstUse = len(recs) == 0
	entries, err := q.List(ctx)
	if err != nil {
		return nil, err
	}
	onRemote := map[string]bool{}
	var active, ended []SharedJob
	for _, ent := range entries {
		if ent.Err != nil || ent.Job == nil {
			err := ent.Err
			if err == nil {
				err = errors.New("empty record")
			}
			st.Unreadable = append(st.Unreadable, &gitstate.UnreadableError{
				Path: fmt.Sprintf("%s %s%s (version %s)", st.Remote, refstore.Prefix, ent.Name, ent.VersionID), Err: err})
			continue
		}
		onRemote[ent.Job.ID] = true
		sj := SharedJob{Entry: ent}
		if lj, err := e.Store.Get(ent.Job.ID); err == nil {
			sj.Local = lj
		}
		observe(q, &sj)
		if ent.Job.Status.Terminal() {
			ended = append(ended, sj)
		} else {
			active = append(active, sj)
		}
	}
	sort.SliceStable(active, func(a, b int) bool {
		return active[a].Job.Status == gitstate.Running && active[b].Job.Status != gitstate.Running
	})
	sort.SliceStable(ended, func(a, b int) bool { return ended[a].Job.EndedAt.After(ended[b].Job.EndedAt) })
	if !all && len(ended) > recentEnded {
		ended = ended[:recentEnded]
	}
	st.Jobs = append(active, ended...)

	leases, bad, err := remoteLeases(ctx, e.Shared)
	if err != nil {
		return nil, err
	}
	st.Leases, st.Unreadable = leases, append(st.Unreadable, bad...)

	// This machine's jobs the remote does not know.
	local, err := e.Store.Active()
	if err != nil {
		return nil, err
	}
	recent, err := e.Store.Recent(recentEnded)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, j := range append(local.Jobs, recent.Jobs...) {
		if !onRemote[j.ID] && !seen[j.ID] {
			seen[j.ID] = true
			st.LocalOnly = append(st.LocalOnly, j)
		}
	}
	st.Unreadable = append(st.Unreadable, local.Unreadable...)
	return st, nil
}

// remoteLeases lists the shared leases as of the last fetch.
func remoteLeases(ctx context.Context, sh *Shared) ([]*remotelease.Lease, []*gitstate.UnreadableError, error) {
	m := sh.Leases
	if m == nil {
		m = remotelease.New(sh.Queue.Store)
	}
	return m.List(ctx)
}

// SharedJobOf returns shared job id as one Sync found it, with this
// machine's record of it when it ran here.
func (e *Env) SharedJobOf(ctx context.Context, id string) (SharedJob, error) {
	if e.Shared == nil {
		return SharedJob{}, errNoShared
	}
	q := e.Shared.Queue
	if err := e.SyncShared(ctx); err != nil {
		return SharedJob{}, err
	}
	ent, err := q.Get(ctx, id)
	if errors.Is(err, remotejob.ErrNotFound) {
		return SharedJob{}, e.sharedNotFound(id)
	}
	if err != nil {
		return SharedJob{}, err
	}
	if ent.Err != nil {
		return SharedJob{}, fmt.Errorf("job %s on %s (version %s): %w", id, q.Store.Remote(), ent.VersionID, ent.Err)
	}
	sj := SharedJob{Entry: ent}
	if lj, err := e.Store.Get(id); err == nil {
		sj.Local = lj
	}
	observe(q, &sj)
	return sj, nil
}
