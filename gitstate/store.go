package gitstate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Layout of the state dir. Job records live in jobs/; active/ holds an empty
// marker per queued or running job, so finding the active jobs costs the
// same however many jobs have ended; running/ holds one per running job, so
// the reaper reads only those (not the queue); advance/ holds one per done job whose
// next job may not have been enqueued yet, for the same reason. Lock files
// live apart in locks/ because they are permanent.
const (
	jobsDir    = "jobs"
	activeDir  = "active"
	runningDir = "running"
	advanceDir = "advance"
	locksDir   = "locks"
	logsDir    = "logs"
	exitDir    = "exit"
	eventsFile = "events.jsonl"
	recordExt  = ".toml"
)

var (
	// ErrNotInitialised is returned (wrapped) when the state dir is missing.
	ErrNotInitialised = errors.New("orch-hooks is not initialised in this repository")
	// ErrNotFound is returned (wrapped) for a job id with no record.
	ErrNotFound = errors.New("no such job")
	// ErrSkip, returned by an Update function, declines the write: the
	// record is left exactly as it was and Update returns ErrSkip.
	ErrSkip = errors.New("update skipped")
)

// UnreadableError is a record that exists but cannot be parsed. It is
// reported, never deleted, and never stops a listing.
type UnreadableError struct {
	Path string
	Err  error
}

func (e *UnreadableError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }
func (e *UnreadableError) Unwrap() error { return e.Err }

// withoutPath returns the error inside err when err is an *fs.PathError
// about path, which an UnreadableError names already.
func withoutPath(err error, path string) error {
	if pe, ok := err.(*fs.PathError); ok && pe.Path == path {
		return pe.Err
	}
	return err
}

// Store is the job store in a state dir. It is safe for use by any number of
// processes at once: every change is a compare-and-swap under the job's lock.
type Store struct {
	dir string
	// Actor names the writer in the event log and in job histories
	// ("cli", "monitor", "reaper", ...).
	Actor string
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// LockTimeout bounds each wait for a job's lock.
	LockTimeout time.Duration
	// ReadOnly stops listings from removing the markers a crash left behind
	// (a dry run writes nothing at all).
	ReadOnly bool
	// LogMode, when set, is the permission of a job log OpenLog creates;
	// when zero, it follows the repository's core.sharedRepository
	// (SharedLogMode).
	LogMode fs.FileMode
	// markers keeps running markers open between listings
	// (RunningSummarised); nil keeps none.
	markers *markerFiles
}

// sharedLogMode reads core.sharedRepository of the repository whose common
// git dir holds the state dir. It runs git, once per log opened (a job's
// start, not a hook's fast path); any failure means the private default.
func (s *Store) sharedLogMode() fs.FileMode {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := Git(ctx, filepath.Dir(s.dir), "--git-dir", filepath.Dir(s.dir), "config", "--get", "core.sharedRepository")
	if err != nil {
		return LogModeDefault
	}
	return SharedLogMode(v)
}

// SharedLogMode is the permission of a job log in a repository whose
// core.sharedRepository is value. Logs may hold secrets, so the default
// (unset, "umask", "false", "0") is LogModeDefault, owner only. A shared
// repository (git-config(1): "group"/"true"/"1", "all"/"world"/"everybody"/
// "2", or an octal mode 0xxx) lets the same people read logs that it lets
// read the repository: 0640 for group, 0644 for all, the octal mode without
// execute bits and without write for anyone but the owner (a log is only
// appended to by its job's monitor).
func SharedLogMode(value string) fs.FileMode {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "group", "true", "1", "yes", "on":
		return 0o640
	case "all", "world", "everybody", "2":
		return 0o644
	case "", "umask", "false", "0", "no", "off":
		return LogModeDefault
	}
	if n, err := strconv.ParseUint(strings.TrimSpace(value), 8, 32); err == nil && n&0o600 == 0o600 {
		return fs.FileMode(n) & 0o644
	}
	return LogModeDefault
}

// LogModeDefault is the permission of a job log: agent output may hold
// tokens and other secrets, so only the owner reads it.
const LogModeDefault fs.FileMode = 0o600

// OpenLog opens job id's log for appending, creating it with s.LogMode. A
// symlink, FIFO, socket or directory in its place is refused
// (statefile.ErrNotRegular), never followed or waited on.
func (s *Store) OpenLog(id string) (*os.File, error) {
	mode := s.LogMode
	if mode == 0 {
		mode = s.sharedLogMode()
	}
	f, err := statefile.Open(s.LogPath(id), os.O_WRONLY|os.O_APPEND|os.O_CREATE, mode)
	if err != nil {
		return nil, fmt.Errorf("job %s: open log: %w%s", id, err, statefile.PermissionHint(err, s.LogPath(id)))
	}
	return f, nil
}

// Init creates the state dir and its subdirectories. It is idempotent.
func Init(stateDir string) error {
	for _, d := range []string{"", jobsDir, activeDir, runningDir, advanceDir, locksDir, logsDir, exitDir} {
		if err := os.MkdirAll(filepath.Join(stateDir, d), 0o755); err != nil {
			return fmt.Errorf("init state dir: %w", err)
		}
	}
	return nil
}

// stateSubdirs are the directories of the state dir, each checked at open.
var stateSubdirs = []string{jobsDir, activeDir, runningDir, advanceDir, locksDir, logsDir, exitDir}

// OpenStore opens the job store of an initialised state dir. The state dir
// itself may be a symlink (put there by the repository's owner, as .git
// itself may be one), but each of its subdirectories must be a directory,
// not a symlink or anything else: every write below it would otherwise go
// wherever the link points. One that is not is refused with the fix.
func OpenStore(stateDir string) (*Store, error) {
	fi, err := os.Stat(filepath.Join(stateDir, jobsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s); run: orch-hooks init", ErrNotInitialised, filepath.Join(stateDir, jobsDir))
	}
	if err != nil {
		return nil, fmt.Errorf("open job store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open job store: %s is not a directory", filepath.Join(stateDir, jobsDir))
	}
	for _, d := range stateSubdirs {
		if err := statefile.CheckDir(filepath.Join(stateDir, d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open job store: %w", err)
		}
	}
	s := &Store{dir: stateDir, Actor: "cli", Now: time.Now, LockTimeout: statefile.LockTimeoutDefault}
	s.markers = newMarkerFiles(s)
	return s, nil
}

// Dir is the state dir.
func (s *Store) Dir() string { return s.dir }

// RecordPath is the path of a job's record.
func (s *Store) RecordPath(id string) string { return filepath.Join(s.dir, jobsDir, id+recordExt) }

// LogPath is the path of a job's output log.
func (s *Store) LogPath(id string) string { return filepath.Join(s.dir, logsDir, id+".log") }

// LockPath is the path of a named lock file in the state dir.
func (s *Store) LockPath(name string) string { return filepath.Join(s.dir, locksDir, name+".lock") }

// EventsPath is the path of the append-only event log.
func (s *Store) EventsPath() string { return filepath.Join(s.dir, eventsFile) }

func (s *Store) activePath(id string) string { return filepath.Join(s.dir, activeDir, id) }

func (s *Store) now() time.Time { return s.Now().UTC() }

// Create stores j as a new queued job, exclusively: if a job with that id
// exists, nothing is written and the existing job is returned with
// created=false. An id gc collected (it has a tombstone) is refused with an
// error wrapping ErrCollected: a job id runs at most once, gc or not.
// j.Status must be Queued.
func (s *Store) Create(j *Job) (stored *Job, created bool, err error) {
	if err := ValidateJobID(j.ID); err != nil {
		return nil, false, err
	}
	if j.Status != Queued {
		return nil, false, fmt.Errorf("create job %s: status %q, want queued", j.ID, j.Status)
	}
	// Checked once without the lock, so a refused or repeated enqueue writes
	// nothing (not even a lock file), then again under the job's lock,
	// which gc holds from writing the tombstone to removing the record: a
	// Create never slips a new record in behind a collection.
	if existing, err := s.lookupForCreate(j.ID); existing != nil || err != nil {
		return existing, false, err
	}
	unlock, err := s.Lock(context.Background(), j.ID)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	if existing, err := s.lookupForCreate(j.ID); existing != nil || err != nil {
		return existing, false, err
	}
	j = j.Clone()
	j.Version = RecordVersion
	if j.CreatedAt.IsZero() {
		j.CreatedAt = s.now()
	}
	t := s.transition(j.ID, "", Queued, "enqueued")
	t.At = j.CreatedAt
	j.History = append(j.History, t)
	data, err := s.encode(j)
	if err != nil {
		return nil, false, err
	}
	// The active marker goes first: a marker without a record is skipped by
	// readers and completed by the next Create, while a record without a
	// marker would be a queued job nobody finds.
	if err := s.touchActive(j.ID); err != nil {
		return nil, false, err
	}
	crashpoint.Hit("store.marked")
	created, err = statefile.Create(s.RecordPath(j.ID), data)
	if err != nil {
		return nil, false, fmt.Errorf("job %s: %w", j.ID, err)
	}
	crashpoint.Hit("store.created")
	if !created {
		existing, err := s.Get(j.ID)
		return existing, false, err
	}
	s.logEvent(t)
	return j, true, nil
}

func (s *Store) touchActive(id string) error { return s.touch(activeDir, id) }

// touch creates an empty marker file dir/id.
func (s *Store) touch(dir, id string) error {
	path := filepath.Join(s.dir, dir, id)
	f, err := statefile.Open(path, os.O_WRONLY|os.O_CREATE, statefile.Mode)
	if errors.Is(err, fs.ErrNotExist) {
		// A state dir made by an older version may lack the directory.
		if err = os.Mkdir(filepath.Dir(path), 0o755); err == nil || errors.Is(err, fs.ErrExist) {
			f, err = statefile.Open(path, os.O_WRONLY|os.O_CREATE, statefile.Mode)
		}
	}
	if err != nil {
		return fmt.Errorf("job %s: mark %s: %w%s", id, dir, err, statefile.PermissionHint(err, path))
	}
	return f.Close()
}

// PendingAdvances lists the done jobs that name a next job and have not
// been marked advanced (ClearAdvance): each either has its next job already,
// or lost it to a crash between the terminal claim and the enqueue. The cost
// depends on those jobs only, never on the number of ended jobs.
func (s *Store) PendingAdvances() (Listing, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, advanceDir))
	if errors.Is(err, fs.ErrNotExist) {
		return Listing{}, nil
	}
	if err != nil {
		return Listing{}, fmt.Errorf("list pending advances: %w", err)
	}
	var l Listing
	for _, e := range ents {
		id := e.Name()
		if ValidateJobID(id) != nil {
			continue
		}
		j, err := s.Get(id)
		var ue *UnreadableError
		switch {
		case errors.As(err, &ue):
			l.Unreadable = append(l.Unreadable, ue)
		case err != nil:
			// The record is gone (gc): nothing left to advance.
			if !s.ReadOnly {
				os.Remove(filepath.Join(s.dir, advanceDir, id))
			}
		case j.Status != Done || j.NextJob == "":
			// The marker is written before the record: a crash between the
			// two leaves a marker for a job that did not end done.
			if j.Status.Terminal() && !s.ReadOnly {
				os.Remove(filepath.Join(s.dir, advanceDir, id))
			}
		default:
			l.Jobs = append(l.Jobs, j)
		}
	}
	sortJobs(l.Jobs)
	return l, nil
}

// ClearAdvance records that job id's next job exists.
func (s *Store) ClearAdvance(id string) error {
	err := os.Remove(filepath.Join(s.dir, advanceDir, id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("job %s: clear advance marker: %w", id, err)
	}
	return nil
}

// Get reads one job record. A missing record wraps ErrNotFound; a record
// that cannot be parsed is an *UnreadableError.
func (s *Store) Get(id string) (*Job, error) {
	if err := ValidateJobID(id); err != nil {
		return nil, err
	}
	return s.read(s.RecordPath(id), id)
}

func (s *Store) read(path, id string) (*Job, error) {
	data, err := statefile.ReadFile(path, statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, &UnreadableError{Path: path, Err: withoutPath(err, path)}
	}
	j, err := DecodeJob(data)
	if err != nil {
		return nil, &UnreadableError{Path: path, Err: err}
	}
	if j.ID != id {
		return nil, &UnreadableError{Path: path, Err: fmt.Errorf("record holds job %q, file is named for %q", j.ID, id)}
	}
	return j, nil
}

// Listing is the result of reading many records: the jobs that parsed, in
// creation order, and the records that did not.
type Listing struct {
	Jobs       []*Job
	Unreadable []*UnreadableError
}

// Active lists the queued and running jobs. It reads only their records,
// never those of ended jobs. A marker left behind by a crash after a
// terminal write is removed on the way.
func (s *Store) Active() (Listing, error) { return s.listMarked(activeDir) }

// Running lists the running jobs, reading only their records: the reaper's
// listing, whose cost follows the running jobs, not the queue or history.
func (s *Store) Running() (Listing, error) {
	l, err := s.listMarked(runningDir)
	jobs := l.Jobs[:0]
	for _, j := range l.Jobs {
		if j.Status == Running {
			jobs = append(jobs, j)
		}
	}
	l.Jobs = jobs
	return l, err
}

// listMarked reads the records of the jobs marked in dir. Markers whose job
// has ended (a crash between the record write and the marker removal) are
// removed on the way, unless ReadOnly.
func (s *Store) listMarked(dir string) (Listing, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, dir))
	if errors.Is(err, fs.ErrNotExist) && dir == runningDir {
		return Listing{}, nil // a state dir made before running/ existed
	}
	if err != nil {
		return Listing{}, fmt.Errorf("list %s jobs: %w", dir, err)
	}
	var l Listing
	for _, e := range ents {
		id := e.Name()
		if ValidateJobID(id) != nil {
			continue
		}
		j, err := s.Get(id)
		switch {
		case errors.Is(err, ErrNotFound):
			// A create in progress, or one a crash cut short before the
			// record; the next enqueue of that id completes it.
		case err != nil:
			var ue *UnreadableError
			if errors.As(err, &ue) {
				l.Unreadable = append(l.Unreadable, ue)
			} else {
				l.Unreadable = append(l.Unreadable, &UnreadableError{Path: s.RecordPath(id), Err: err})
			}
		case j.Status.Terminal():
			if !s.ReadOnly {
				os.Remove(filepath.Join(s.dir, dir, id))
			}
		default:
			l.Jobs = append(l.Jobs, j)
		}
	}
	sortJobs(l.Jobs)
	return l, nil
}

// All lists every job record, active and ended.
func (s *Store) All() (Listing, error) {
	dir := filepath.Join(s.dir, jobsDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Listing{}, fmt.Errorf("list jobs: %w", err)
	}
	var l Listing
	for _, e := range ents {
		name := e.Name()
		if statefile.IsTemp(name) || !strings.HasSuffix(name, recordExt) {
			continue
		}
		id := strings.TrimSuffix(name, recordExt)
		path := filepath.Join(dir, name)
		if ValidateJobID(id) != nil {
			l.Unreadable = append(l.Unreadable, &UnreadableError{Path: path, Err: fmt.Errorf("file name is not a valid job id")})
			continue
		}
		j, err := s.read(path, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			var ue *UnreadableError
			if !errors.As(err, &ue) {
				ue = &UnreadableError{Path: path, Err: err}
			}
			l.Unreadable = append(l.Unreadable, ue)
			continue
		}
		l.Jobs = append(l.Jobs, j)
	}
	sortJobs(l.Jobs)
	return l, nil
}

func sortJobs(js []*Job) {
	sort.SliceStable(js, func(a, b int) bool { return jobBefore(js[a], js[b]) })
}

// jobBefore orders jobs by creation, then id.
func jobBefore(a, b *Job) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.ID < b.ID
}

// Lock takes a job's lock, waiting up to the store's LockTimeout.
func (s *Store) Lock(ctx context.Context, id string) (unlock func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, s.LockTimeout)
	defer cancel()
	unlock, err = statefile.Lock(ctx, s.LockPath("job-"+id))
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", id, err)
	}
	return unlock, nil
}

// Update is the only way a job record changes after it is created. Under the
// job's lock it reads the current record, passes a copy to fn, and writes the
// result atomically if fn returns nil. If fn returns an error (ErrSkip to
// decline quietly) nothing is written and the error is returned with the
// current record. A status change must be an edge of the state machine; it
// is stamped with its time, recorded in the job's history and appended to
// the event log, and a terminal status clears the job's active marker.
// The record of an ended job is never rewritten.
//
// Each after function is called with the written record once the write has
// landed, while the job's lock is still held: a side effect fenced by that
// write starts there, before anyone else can change the record.
func (s *Store) Update(ctx context.Context, id string, reason string, fn func(j *Job) error, after ...func(j *Job)) (*Job, error) {
	if err := ValidateJobID(id); err != nil {
		return nil, err
	}
	unlock, err := s.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	next := cur.Clone()
	if err := fn(next); err != nil {
		return cur, err
	}
	if cur.Status.Terminal() {
		return cur, fmt.Errorf("job %s is %s: an ended job's record never changes", id, cur.Status)
	}
	if next.ID != cur.ID {
		return cur, fmt.Errorf("job %s: update changed the id to %q", id, next.ID)
	}
	var t *Transition
	if next.Status != cur.Status {
		if !CanTransition(cur.Status, next.Status) {
			return cur, fmt.Errorf("job %s: %s → %s is not a transition of the state machine", id, cur.Status, next.Status)
		}
		tr := s.transition(id, cur.Status, next.Status, reason)
		next.History = append(next.History, tr)
		switch {
		case next.Status == Running && next.StartedAt.IsZero():
			next.StartedAt = tr.At
		case next.Status.Terminal() && next.EndedAt.IsZero():
			next.EndedAt = tr.At
		}
		t = &tr
	}
	data, err := s.encode(next)
	if err != nil {
		return cur, err
	}
	if next.Status.Terminal() && next.NextJob != "" {
		// Before the record: a crash after the terminal write must leave
		// the pending advance findable without reading every ended job.
		if err := s.touch(advanceDir, id); err != nil {
			return cur, err
		}
	}
	if next.Status == Running && cur.Status != Running {
		// Before the record, for the same reason: a running job is always
		// marked (a marker whose job is not running is skipped and tidied).
		if err := s.touch(runningDir, id); err != nil {
			return cur, err
		}
	}
	if err := statefile.Replace(s.RecordPath(id), data); err != nil {
		return cur, fmt.Errorf("job %s: %w", id, err)
	}
	crashpoint.Hit("store.updated")
	if next.Status == Running {
		// The marker's summary of the record, for the reaper's listing:
		// the record just written is the one it names, so a crash before
		// this (or a write that fails) leaves a summary readers pass over.
		s.writeSummary(next)
	}
	if t != nil {
		if next.Status.Terminal() {
			os.Remove(s.activePath(id))
			os.Remove(filepath.Join(s.dir, runningDir, id))
		}
		s.logEvent(*t)
	}
	for _, a := range after {
		a(next)
	}
	return next, nil
}

// Claim moves job id from one of the statuses in from to status to, only if
// it is still in one of them: the compare-and-swap every actor uses to take
// ownership of a job's next step. fn, if not nil, fills in the rest of the
// same write. won is false, and nothing is written, when the job was no
// longer in a from status (someone else claimed it first); the returned job
// is then the current record.
func (s *Store) Claim(ctx context.Context, id string, from []Status, to Status, reason string, fn func(j *Job)) (j *Job, won bool, err error) {
	j, err = s.Update(ctx, id, reason, func(j *Job) error {
		for _, f := range from {
			if j.Status == f {
				j.Status = to
				if to.Terminal() {
					j.Reason = reason
				}
				if fn != nil {
					fn(j)
				}
				return nil
			}
		}
		return ErrSkip
	})
	if errors.Is(err, ErrSkip) {
		return j, false, nil
	}
	if err != nil {
		return j, false, err
	}
	return j, true, nil
}

func (s *Store) transition(id string, from, to Status, reason string) Transition {
	host, _ := procid.Host()
	return Transition{At: s.now(), Job: id, Actor: s.Actor, PID: os.Getpid(), Host: host, From: from, To: to, Reason: clampText(reason)}
}

// TextMax bounds each free-text field of a job record as it is written: the
// reason, each history entry's reason and each gate's detail. They carry
// command output and error text (a mergeable gate lists every conflicting
// path), and a record must stay far below statefile.MaxSizeDefault, the size
// past which readers refuse it.
const TextMax = 8 << 10

// clampText cuts s so that its stored form (statefile.EscapeText: a byte
// that is not UTF-8 takes four) is at most TextMax bytes, on a character
// boundary, saying how much was cut.
func clampText(s string) string {
	if statefile.EscapedLen(s) <= TextMax {
		return s
	}
	// Room for the escape prefix, the note and the worst case of the last
	// character taken.
	budget := TextMax - 64 - len(statefile.TextEscapePrefix)
	cut, size := 0, 0
	for cut < len(s) {
		r, n := utf8.DecodeRuneInString(s[cut:])
		w := n
		switch {
		case r == utf8.RuneError && n <= 1:
			w = 4
		case r == '\\':
			w = 2
		}
		if size+w > budget {
			break
		}
		size += w
		cut += n
	}
	return s[:cut] + fmt.Sprintf(" … (%d more bytes cut)", len(s)-cut)
}

// encode clamps j's free text (in place: j is the copy about to be written,
// and then returned) and encodes it. A record that would still be larger than
// readers accept is refused, so a write never makes a job unreadable.
func (s *Store) encode(j *Job) ([]byte, error) {
	// Copies: an update function may have set slices its caller keeps.
	j.Gates = append([]GateResult(nil), j.Gates...)
	j.History = append([]Transition(nil), j.History...)
	j.Reason = clampText(j.Reason)
	for i := range j.Gates {
		j.Gates[i].Detail = clampText(j.Gates[i].Detail)
	}
	for i := range j.History {
		j.History[i].Reason = clampText(j.History[i].Reason)
	}
	data, err := encodeJob(j)
	if err != nil {
		return nil, err
	}
	if len(data) > statefile.MaxSizeDefault {
		return nil, fmt.Errorf("job %s: the record would be %d bytes, over the %d-byte cap readers accept; not written", j.ID, len(data), statefile.MaxSizeDefault)
	}
	return data, nil
}

// Remove deletes an ended job's record, log, lock file and markers: gc's
// only write to the store. Active jobs are refused. The lock file of an
// ended job can go because no writer will ever take it again: an ended
// record never changes.
func (s *Store) Remove(id string) error {
	j, err := s.Get(id)
	if err != nil {
		return err
	}
	if !j.Status.Terminal() {
		return fmt.Errorf("job %s is %s: only an ended job can be removed", id, j.Status)
	}
	for _, p := range []string{s.RecordPath(id), s.LogPath(id), filepath.Join(s.dir, advanceDir, id), s.activePath(id), filepath.Join(s.dir, runningDir, id), s.ExitPath(id), s.LockPath("job-" + id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("job %s: remove: %w", id, err)
		}
	}
	if err := s.RemoveStepExits(id); err != nil {
		return err
	}
	return statefile.SyncDir(filepath.Join(s.dir, jobsDir))
}
