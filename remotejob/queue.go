package remotejob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// attempts bounds the re-reads after lost compare-and-swaps in one call
// whose outcome is still open (a queued job others keep writing, a runner's
// own adopter beating in between).
const attempts = 8

// recordVersion is Job.Version as this package writes it.
const recordVersion = 1

func (q *Queue) now() time.Time {
	if q.Now == nil {
		return time.Now().UTC()
	}
	return q.Now().UTC()
}

// runnerEnd is EndedBy of a job its runner settled on host.
func runnerEnd(host string) string { return "monitor@" + host }

// EndedByRunner reports whether j ended by its own runner's Settle (not
// by a cancel or an expiry): the one test of "this end is the run's own",
// for Settle's convergence and for a late settle that finds it landed.
func (j *Job) EndedByRunner() bool {
	return j.Status.Terminal() && j.Run != "" && j.EndedBy == runnerEnd(j.Host)
}

func newRun() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("a run id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// where names a job's record on the remote, for messages.
func (q *Queue) where(id string) string {
	return fmt.Sprintf("shared job %s (%s%s on %s)", id, refstore.Prefix, RecordName(id), q.Store.Remote())
}

// decode turns a mirrored record into an Entry; a record that does not
// decode, or decodes to something that is not the job its name says, is
// an Entry with Err (an *gitstate.UnreadableError), left as it is.
func (q *Queue) decode(rec *refstore.Record) Entry {
	e := Entry{Name: rec.Name, VersionID: rec.ID}
	id := strings.TrimPrefix(rec.Name, Dir+"/")
	bad := func(err error) Entry {
		e.Err = &gitstate.UnreadableError{
			Path: fmt.Sprintf("%s version %s", q.where(id), rec.ID),
			Err: fmt.Errorf("%w; look at it with git show %s:%s; it is left as it is: push a version that decodes, or delete the ref on the remote (git push %s :%s%s) to drop the job",
				err, rec.ID, refstore.FileName, q.Store.Remote(), refstore.Prefix, rec.Name),
		}
		return e
	}
	if rec.Data == nil {
		return bad(fmt.Errorf("the record's commit has no %s", refstore.FileName))
	}
	var j Job
	if _, err := statefile.DecodeTOML(rec.Data, &j); err != nil {
		return bad(err)
	}
	switch {
	case j.ID != id:
		return bad(fmt.Errorf("the record is of job %q, not of %q", j.ID, id))
	case !j.Status.Valid():
		return bad(fmt.Errorf("unknown status %q", j.Status))
	}
	e.Job = &j
	return e
}

func (q *Queue) list(ctx context.Context) ([]Entry, error) {
	recs, err := q.Store.GetAll(ctx, Dir)
	if err != nil {
		return nil, fmt.Errorf("shared jobs on %s: %w", q.Store.Remote(), err)
	}
	out := make([]Entry, 0, len(recs))
	for _, rec := range recs {
		out = append(out, q.decode(rec))
	}
	// Oldest first; the undecodable ones (no time to order by) last, by
	// name.
	sort.Slice(out, func(a, b int) bool {
		ja, jb := out[a].Job, out[b].Job
		switch {
		case ja == nil || jb == nil:
			if (ja == nil) != (jb == nil) {
				return jb == nil
			}
			return out[a].Name < out[b].Name
		case !ja.CreatedAt.Equal(jb.CreatedAt):
			return ja.CreatedAt.Before(jb.CreatedAt)
		}
		return ja.ID < jb.ID
	})
	return out, nil
}

// get is Get: the mirror's version of job id. An undecodable record is
// returned with Err set, and Err as the error.
func (q *Queue) get(ctx context.Context, id string) (Entry, error) {
	rec, err := q.Store.Get(ctx, RecordName(id))
	if err != nil {
		return Entry{}, fmt.Errorf("shared job %s: %w", id, err)
	}
	if rec.ID == "" {
		return Entry{Name: RecordName(id)}, fmt.Errorf("%s: %w (as of the last sync of this machine)", q.where(id), ErrNotFound)
	}
	e := q.decode(rec)
	return e, e.Err
}

// read is Sync then Get: the remote's current version of job id.
func (q *Queue) read(ctx context.Context, id string) (Entry, error) {
	if err := q.Sync(ctx); err != nil {
		return Entry{}, fmt.Errorf("shared job %s: %w", id, err)
	}
	return q.get(ctx, id)
}

// prepare writes (locally) version j of its record as a child of parent
// and returns the update that sets it.
func (q *Queue) prepare(ctx context.Context, j *Job, parent string) (refstore.Update, error) {
	data, err := statefile.EncodeTOML(j)
	if err != nil {
		return refstore.Update{}, fmt.Errorf("shared job %s: %w", j.ID, err)
	}
	id, err := q.Store.Prepare(ctx, RecordName(j.ID), data, parent)
	if err != nil {
		return refstore.Update{}, fmt.Errorf("shared job %s: %w", j.ID, err)
	}
	return refstore.Update{Ref: refstore.Prefix + RecordName(j.ID), Old: parent, New: id}, nil
}

// landed reports, after a write whose fate is unknown (the transport
// failed), whether up is now the remote's version of job id: version ids
// never repeat, so finding it means it landed.
func (q *Queue) landed(ctx context.Context, id string, up refstore.Update) bool {
	e, err := q.read(ctx, id)
	return err == nil && e.VersionID == up.New
}

// newJob completes j as the first version of a queued job.
func (q *Queue) newJob(j Job) (Job, error) {
	if j.ID == "" {
		j.ID = gitstate.JobID(j.Task, j.Stage, j.Attempt)
	}
	if err := refstore.ValidateName(RecordName(j.ID)); err != nil {
		return j, fmt.Errorf("shared job: %w", err)
	}
	if j.Status != "" && j.Status != gitstate.Queued {
		return j, fmt.Errorf("%s: a new job is queued, not %s", q.where(j.ID), j.Status)
	}
	j.Version, j.Status = recordVersion, gitstate.Queued
	if j.CreatedAt.IsZero() {
		j.CreatedAt = q.now()
	}
	j.Host, j.Run, j.Beats, j.BeatAt, j.Progress = "", "", 0, time.Time{}, ""
	j.StartedAt, j.EndedAt, j.ExitCode, j.Reason, j.EndedBy, j.Next = time.Time{}, time.Time{}, nil, "", "", ""
	return j, nil
}

func (q *Queue) enqueue(ctx context.Context, j Job) (bool, error) {
	j, err := q.newJob(j)
	if err != nil {
		return false, err
	}
	up, err := q.prepare(ctx, &j, "")
	if err != nil {
		return false, err
	}
	err = q.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, refstore.ErrConflict):
		return false, nil
	case errors.Is(err, refstore.ErrUnreachable) && q.landed(ctx, j.ID, up):
		return true, nil
	}
	return false, fmt.Errorf("enqueue %s: %w", q.where(j.ID), err)
}

func (q *Queue) claim(ctx context.Context, id string) (*Claimed, error) {
	e, err := q.get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		e, err = q.read(ctx, id)
	}
	for i := 0; ; i++ {
		if err != nil {
			return nil, fmt.Errorf("claim: %w", err)
		}
		cur := e.Job
		if cur.Status != gitstate.Queued {
			return nil, fmt.Errorf("claim %s: %w: it is %s%s", q.where(id), ErrTaken, cur.Status, byWhom(cur))
		}
		if i == attempts {
			return nil, fmt.Errorf("claim %s: it changed under %d attempts in a row while queued; nothing was claimed, try again", q.where(id), attempts)
		}
		run, rerr := newRun()
		if rerr != nil {
			return nil, rerr
		}
		next := *cur
		now := q.now()
		next.Status, next.Host, next.Run, next.StartedAt, next.Progress = gitstate.Running, q.Host, run, now, "claimed"
		next.Beats, next.BeatAt = 0, now
		up, perr := q.prepare(ctx, &next, e.VersionID)
		if perr != nil {
			return nil, perr
		}
		err = q.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
		switch {
		case err == nil:
			return &Claimed{Job: next, VersionID: up.New}, nil
		case errors.Is(err, refstore.ErrUnreachable) && q.landed(ctx, id, up):
			return &Claimed{Job: next, VersionID: up.New}, nil
		case !errors.Is(err, refstore.ErrConflict):
			return nil, fmt.Errorf("claim %s: %w", q.where(id), err)
		}
		e, err = q.read(ctx, id)
	}
}

// byWhom says, for a message, who holds or ended j.
func byWhom(j *Job) string {
	switch {
	case j.Status == gitstate.Running:
		return fmt.Sprintf(" on %s (run %s)", j.Host, j.Run)
	case j.EndedBy != "":
		return " by " + j.EndedBy
	case j.Host != "":
		return fmt.Sprintf(" (run %s on %s)", j.Run, j.Host)
	}
	return ""
}

// change writes a new version of c's job, made by apply from the job as c
// holds it, together with others, as one compare-and-swap expecting
// c.VersionID. After a lost race it re-reads: while the job is still
// running under c's run (its own adopter wrote in between) it applies the
// change to that version and tries again; when settled tells that the
// current version is this very change landed already (a retry after an
// unknown fate), that is success; otherwise ErrLost and nothing landed.
// retryOthers, when not nil, is asked after a lost race in which the job
// itself was unchanged (one of others lost) for the others to try again
// with, or an error.
func (q *Queue) change(ctx context.Context, c *Claimed, what string, apply func(Job) Job, others []refstore.Update,
	settled func(*Job) bool, retryOthers func(err error) ([]refstore.Update, error)) error {
	if c.Status != gitstate.Running {
		// Written over, a terminal version would change: never.
		return fmt.Errorf("%s %s: %w: this run's view of it is %s already%s; nothing was written", what, q.where(c.ID), ErrLost, c.Status, byWhom(&c.Job))
	}
	for i := 0; i < attempts; i++ {
		next := apply(c.Job)
		up, err := q.prepare(ctx, &next, c.VersionID)
		if err != nil {
			return err
		}
		err = q.Store.Update(ctx, append(append([]refstore.Update(nil), others...), up), refstore.PushOptions{})
		if err == nil {
			c.Job, c.VersionID = next, up.New
			return nil
		}
		if !errors.Is(err, refstore.ErrConflict) {
			// Unreachable: it may have landed; the next write of c learns
			// which (its compare-and-swap loses, the re-read finds c's run).
			return fmt.Errorf("%s %s: %w", what, q.where(c.ID), err)
		}
		e, rerr := q.read(ctx, c.ID)
		if rerr != nil {
			return fmt.Errorf("%s %s: the write lost and the re-read failed: %w", what, q.where(c.ID), rerr)
		}
		cur := e.Job
		switch {
		case e.VersionID == c.VersionID:
			if retryOthers == nil {
				continue // a lock held at that instant by a racing write: again
			}
			if others, err = retryOthers(err); err != nil {
				return err
			}
		case settled != nil && settled(cur):
			c.Job, c.VersionID = *cur, e.VersionID
			return nil
		case cur.Status == gitstate.Running && cur.Run == c.Run:
			c.Job, c.VersionID = *cur, e.VersionID
		default:
			return fmt.Errorf("%s %s: %w: it is %s%s; nothing was written", what, q.where(c.ID), ErrLost, cur.Status, byWhom(cur))
		}
	}
	return fmt.Errorf("%s %s: it changed under %d attempts in a row; nothing was written, try again", what, q.where(c.ID), attempts)
}

func (q *Queue) beat(ctx context.Context, c *Claimed, progress string) error {
	return q.change(ctx, c, "beat", func(j Job) Job {
		j.Beats++
		j.BeatAt = q.now()
		if progress != "" {
			j.Progress = progress
		}
		return j
	}, nil, nil, nil)
}

func (q *Queue) settle(ctx context.Context, c *Claimed, end Ending) error {
	if end.Status != gitstate.Done && end.Status != gitstate.Failed {
		return fmt.Errorf("settle %s: a runner ends its job done or failed, not %q", q.where(c.ID), end.Status)
	}
	endedBy := runnerEnd(c.Host)
	var nextUp *refstore.Update
	var nextID string
	if end.Next != nil {
		nj, err := q.newJob(*end.Next)
		if err != nil {
			return fmt.Errorf("settle %s: its next job: %w", q.where(c.ID), err)
		}
		if nj.ID == c.ID {
			return fmt.Errorf("settle %s: the next job has the same id", q.where(c.ID))
		}
		up, err := q.prepare(ctx, &nj, "")
		if err != nil {
			return err
		}
		nextUp, nextID = &up, nj.ID
	}
	others := append([]refstore.Update(nil), end.Extra...)
	if nextUp != nil {
		others = append(others, *nextUp)
	}
	apply := func(j Job) Job {
		j.Status, j.Reason, j.ExitCode, j.Gates = end.Status, end.Reason, end.ExitCode, end.Gates
		j.EndedAt, j.EndedBy, j.Next = q.now(), endedBy, nextID
		return j
	}
	// This run's settle landed already (a push whose fate was unknown, or
	// a second Settle): everything in it landed with it.
	settled := func(cur *Job) bool {
		return cur.Status == end.Status && cur.Run == c.Run && cur.EndedByRunner() && cur.Next == nextID
	}
	retry := func(lost error) ([]refstore.Update, error) {
		// The job is as c left it: another ref of the push lost. A next
		// job already there is the advance (its id is the next stage's):
		// settle without creating it again.
		if nextUp != nil {
			if rec, err := q.Store.Get(ctx, RecordName(nextID)); err == nil && rec.ID != "" {
				kept := others[:0:0]
				for _, u := range others {
					if u.Ref != nextUp.Ref {
						kept = append(kept, u)
					}
				}
				others, nextUp = kept, nil
				return others, nil
			}
		}
		return nil, fmt.Errorf("settle %s: %w; nothing landed and the job is still this run's (a ref of the settle, e.g. the branch, moved on the remote)", q.where(c.ID), lost)
	}
	if settled(&c.Job) {
		return nil
	}
	return q.change(ctx, c, "settle", apply, others, settled, retry)
}

func (q *Queue) cancel(ctx context.Context, id, reason string) (*Job, bool, error) {
	if reason == "" {
		reason = "cancelled"
	}
	e, err := q.read(ctx, id)
	for i := 0; ; i++ {
		if err != nil {
			return nil, false, fmt.Errorf("cancel: %w", err)
		}
		cur := e.Job
		if cur.Status.Terminal() {
			return cur, false, nil
		}
		if i == attempts {
			return nil, false, fmt.Errorf("cancel %s: it changed under %d attempts in a row; nothing was written, try again", q.where(id), attempts)
		}
		next := *cur
		next.Status, next.Reason, next.EndedBy, next.EndedAt = gitstate.Cancelled, reason, "cancel@"+q.Host, q.now()
		up, perr := q.prepare(ctx, &next, e.VersionID)
		if perr != nil {
			return nil, false, perr
		}
		err = q.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
		switch {
		case err == nil:
			return &next, true, nil
		case errors.Is(err, refstore.ErrUnreachable) && q.landed(ctx, id, up):
			return &next, true, nil
		case !errors.Is(err, refstore.ErrConflict):
			return nil, false, fmt.Errorf("cancel %s: %w", q.where(id), err)
		}
		e, err = q.read(ctx, id)
	}
}
