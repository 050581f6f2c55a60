// Package remotejob keeps the shared job queue of remote mode: one record
// per job on the shared git remote, refs/orch/jobs/<id> (a refstore
// record), changed only by compare-and-swap pushes. The remote, not any
// machine, decides who claimed a job and who ended it.
//
// A job's life on the remote:
//
//	queued ──Claim──▶ running ──Settle──▶ done | failed  (+ the next stage's job, queued)
//	   │                 ├──Expire (no beat for the TTL)──▶ failed
//	   └─────────────────┴──Cancel──▶ cancelled
//
// Claim writes the claimer's host and a fresh run id; every later write of
// the runner (Beat, Settle) expects the version it last wrote, so once
// anyone else writes the record (a cancel, an expiry) that version is gone
// for good and no write of the old runner can land: a runner that lost its
// job learns it from ErrLost and does nothing more. Settle flips the
// terminal status and creates the next stage's job (and lands the
// caller's other refs, e.g. the job's branch) in one atomic push, so a
// job advances at most once and its work lands only if its runner still
// owned it.
//
// Liveness across machines is a heartbeat, never a foreign pid: the runner
// writes a new version at least every heartbeat interval (Beat). Expiry is
// timed by the observer, not by the runner's clock: a job is expired once
// one observer has seen the same version of its record, unchanged, for
// the whole TTL on its own CLOCK_BOOTTIME (its observations are kept in
// a state file on its machine). Clock skew between machines therefore
// never makes a live job expire early; a machine that cannot reach the
// remote sees nothing and expires nothing.
package remotejob

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
)

// Defaults of the [remote] settings of jobs (orch.toml).
const (
	// HeartbeatDefault is how often a runner writes a beat.
	HeartbeatDefault = 10 * time.Second
	// HeartbeatTTLDefault is how long an observer must see a running
	// job's record unchanged before it expires it.
	HeartbeatTTLDefault = 60 * time.Second
)

// Dir is the record directory of jobs: job id's record is Dir+"/"+id.
const Dir = "jobs"

// RecordName is the record name of job id.
func RecordName(id string) string { return Dir + "/" + id }

var (
	// ErrLost: the job is no longer the caller's to write: it was
	// claimed by another run, or ended (cancelled, expired, settled) by
	// someone else. The caller must do nothing more for it.
	ErrLost = errors.New("the shared job is no longer this run's")
	// ErrTaken: Claim found the job not queued (another machine claimed
	// it first, or it ended).
	ErrTaken = errors.New("the shared job is not queued any more")
	// ErrNotFound: no such job on the remote (as of the last Sync).
	ErrNotFound = errors.New("no such shared job")
)

// Job is one version of a shared job record (TOML in the record's tree).
type Job struct {
	Version int             `toml:"version"`
	ID      string          `toml:"id"`
	Task    string          `toml:"task"`
	Stage   string          `toml:"stage"`
	Branch  string          `toml:"branch"`
	Target  string          `toml:"target"`
	Attempt int             `toml:"attempt"`
	Status  gitstate.Status `toml:"status"`

	CreatedAt time.Time `toml:"created_at"`
	StartedAt time.Time `toml:"started_at,omitempty"`
	EndedAt   time.Time `toml:"ended_at,omitempty"`

	// Host is the machine that claimed the job (Queue.Host); Run the
	// random id of that claim. Both are empty while queued.
	Host string `toml:"host,omitempty"`
	Run  string `toml:"run,omitempty"`
	// Beats counts the runner's beats; BeatAt is the runner's wall clock
	// at the last one, for people to read (expiry never uses it).
	Beats  int       `toml:"beats,omitzero"`
	BeatAt time.Time `toml:"beat_at,omitempty"`
	// Progress is what the runner last said it was doing ("command",
	// "exit 0", "finalize 2/3", "merge").
	Progress string `toml:"progress,omitempty"`

	// ExitCode is the stage command's exit code once the runner recorded
	// it (nil before, and for a job that never ran its command).
	ExitCode *int `toml:"exit_code,omitempty"`
	// Reason says why the job ended as it did; EndedBy who ended it
	// ("monitor@HOST", "reaper:heartbeat@HOST", "cancel@HOST").
	Reason  string `toml:"reason,omitempty"`
	EndedBy string `toml:"ended_by,omitempty"`
	// Next is the id of the job Settle created for the next stage.
	Next string `toml:"next,omitempty"`
	// PrevCommit is the commit the previous stage's gates judged.
	PrevCommit string `toml:"prev_commit,omitempty"`
	// Gates are the gate results the runner's finalize judged.
	Gates []gitstate.GateResult `toml:"gates,omitempty"`
}

// Entry is a job as the local mirror holds it: the record's version id and
// the decoded job, or the error that kept it from decoding (reported, never
// dropped).
type Entry struct {
	Name      string // record name, jobs/<id>
	VersionID string
	Job       *Job
	Err       error
}

// Claimed is a running job as its runner holds it: every write of the
// runner expects VersionID, the version it last wrote.
type Claimed struct {
	Job
	VersionID string
}

// Ending is how a runner ends its job in Settle.
type Ending struct {
	Status   gitstate.Status // done or failed
	Reason   string
	ExitCode *int
	Gates    []gitstate.GateResult
	// Next, when not nil, is the next stage's job, created queued in the
	// same push (its id derived from task, stage and attempt: a second
	// create of it loses).
	Next *Job
	// Extra are other ref updates that land in the same atomic push or
	// not at all (the job's branch, expecting the remote's value).
	Extra []refstore.Update
}

// Expiry is a running job an observer expired (or tried to).
type Expiry struct {
	ID   string
	Host string
	// Unchanged is how long this observer saw the record unchanged.
	Unchanged time.Duration
	Won       bool  // the flip to failed landed
	Err       error // the flip failed for another reason than a lost race
}

// Queue is the shared job queue of one remote, seen from one machine.
type Queue struct {
	Store *refstore.Store
	// Host names this machine in records (Claim, EndedBy).
	Host string
	// StateDir holds this machine's observations of other runs' versions
	// (the local state dir of the repository).
	StateDir string
	// TTL: a running job whose record this machine has seen unchanged
	// for this long (on its CLOCK_BOOTTIME) is expired.
	TTL time.Duration
	// Now is the wall clock written in records; tests replace it.
	// Expiry never reads it.
	Now func() time.Time

	// boot reads the observer's clock for expiry (CLOCK_BOOTTIME and the
	// boot id); nil is the machine's own. Only this package's tests set
	// it (export_test.go).
	boot func() (time.Duration, string, error)
}

// New returns the queue of the records in s, as machine host, keeping its
// observations under stateDir, with the default TTL.
func New(s *refstore.Store, host, stateDir string) *Queue {
	return &Queue{Store: s, Host: host, StateDir: stateDir, TTL: HeartbeatTTLDefault, Now: time.Now}
}

// Sync brings the shared queue into the local mirror: one fetch of
// refs/orch/* (refstore.Store.Fetch).
func (q *Queue) Sync(ctx context.Context) error {
	if err := q.Store.Fetch(ctx); err != nil {
		return fmt.Errorf("shared jobs: %w", err)
	}
	return nil
}

// List returns every shared job as of the last Sync (or this machine's own
// writes since), oldest first (CreatedAt, then ID), reading all the
// records with one git cat-file --batch. A record that does not decode is
// an Entry with Err set (a *gitstate.UnreadableError naming its ref,
// version and the fix), after the others.
func (q *Queue) List(ctx context.Context) ([]Entry, error) { return q.list(ctx) }

// Get returns job id as of the last Sync (or this machine's own writes
// since); ErrNotFound when absent. A record that does not decode is
// returned with Entry.Err set, and that error (a
// *gitstate.UnreadableError) as the error too.
func (q *Queue) Get(ctx context.Context, id string) (Entry, error) { return q.get(ctx, id) }

// Enqueue creates j (status queued) on the remote, expecting no record of
// its id. created is false, with no error, when the id exists already (a
// job id runs at most once). An empty j.ID is gitstate.JobID(j.Task,
// j.Stage, j.Attempt); a zero CreatedAt is Now; the claim and end fields
// are cleared.
func (q *Queue) Enqueue(ctx context.Context, j Job) (created bool, err error) {
	return q.enqueue(ctx, j)
}

// Claim flips job id from queued to running for this machine, with a fresh
// run id, re-reading after a lost race while it stays queued. ErrTaken
// when it is not queued (someone else claimed or ended it).
func (q *Queue) Claim(ctx context.Context, id string) (*Claimed, error) { return q.claim(ctx, id) }

// Beat writes a new version of c's job (Beats+1, BeatAt, and progress
// when not empty), only if c.VersionID is still the current version, and
// updates c. After a lost race it re-reads: a job still running under
// c.Run (this run's adopter wrote in between) is beaten from its current
// version; otherwise ErrLost (also when c itself is no longer running)
// and nothing was written. A transport failure wraps
// refstore.ErrUnreachable (then the beat may or may not have landed: the
// next Beat learns which).
func (q *Queue) Beat(ctx context.Context, c *Claimed, progress string) error {
	return q.beat(ctx, c, progress)
}

// Settle ends c's job as end says — the terminal flip, the next stage's
// job and end.Extra in one atomic push expecting c.VersionID — and updates
// c. ErrLost when someone else ended the job first (nothing of end
// landed). Settling again after a push whose fate was unknown converges:
// a job already ended by this run, with end's status and next job, is
// success, and nothing is written twice. A next job that exists already
// while the job is still this run's is the advance: it is not created
// again. When one of end.Extra lost its compare-and-swap, the error
// matches refstore.ErrConflict, nothing landed and the job is still c's.
// A transport failure wraps refstore.ErrUnreachable; Settle again.
func (q *Queue) Settle(ctx context.Context, c *Claimed, end Ending) error {
	return q.settle(ctx, c, end)
}

// Cancel flips job id (queued or running) to cancelled by this machine.
// won is false, with no error, when the job had ended already.
func (q *Queue) Cancel(ctx context.Context, id, reason string) (j *Job, won bool, err error) {
	return q.cancel(ctx, id, reason)
}

// Expire looks at every running job of the last Sync, records in this
// machine's observations the versions it has not seen before, and flips to
// failed (reason "heartbeat expired ...", EndedBy "reaper:heartbeat@Host")
// each job whose version it has seen unchanged for TTL or longer. Jobs of
// every host are judged alike, this machine's own included. One bad
// record or failed flip is reported in its Expiry; the pass goes on.
// A new version, a new boot of this machine, or its boot clock going
// back starts the wait over; a job seen for the first time is never
// expired. The observations are <StateDir>/remote-jobs-seen.toml, under
// the lock <StateDir>/locks/remote-jobs-seen.lock.
func (q *Queue) Expire(ctx context.Context) ([]Expiry, error) { return q.expire(ctx) }
