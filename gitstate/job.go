package gitstate

import (
	"fmt"
	"time"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Status is a job's place in the state machine:
//
//	queued ──▶ running ──▶ done | failed | cancelled
//	   └──────────────────────────────▶ cancelled
//
// A terminal status never changes.
type Status string

const (
	Queued    Status = "queued"
	Running   Status = "running"
	Done      Status = "done"
	Failed    Status = "failed"
	Cancelled Status = "cancelled"
)

// Terminal reports whether s is an end state.
func (s Status) Terminal() bool { return s == Done || s == Failed || s == Cancelled }

// Valid reports whether s is one of the five statuses.
func (s Status) Valid() bool { return s == Queued || s == Running || s.Terminal() }

// allowed lists the transitions of the state machine.
var allowed = map[Status][]Status{
	Queued:  {Running, Cancelled},
	Running: {Done, Failed, Cancelled},
}

// CanTransition reports whether from → to is an edge of the state machine.
func CanTransition(from, to Status) bool {
	for _, s := range allowed[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Who ended a job (Job.EndedBy).
const (
	EndedByMonitor          = "monitor"
	EndedByReaperDead       = "reaper:dead"
	EndedByReaperExitCode   = "reaper:exit_code"
	EndedByReaperMaxRunning = "reaper:max_running"
	EndedByCancel           = "cancel"
	// EndedByReaperUndecodable: the reaper ended a job whose record did not
	// decode (Store.EndUndecodable).
	EndedByReaperUndecodable = "reaper:undecodable"
)

// RecordVersion is written into every job record so a later format can be
// told apart from this one.
const RecordVersion = 1

// Job is one run of one stage of one task. Its record is replaced atomically
// as a whole; every status change is a compare-and-swap under the job's lock
// (see Store.Update). Every string in it may hold any bytes (a path git
// allows, a Latin-1 user identity, binary gate output): the record stores
// them escaped (statefile.EscapeText) and reads back the same bytes; no
// field is replaced lossily, so the merge author and paths come back exact.
type Job struct {
	Version int    `toml:"version"`
	ID      string `toml:"id"`
	Task    string `toml:"task"`
	Stage   string `toml:"stage"`
	Branch  string `toml:"branch"`
	Target  string `toml:"target"`
	Attempt int    `toml:"attempt"`
	Status  Status `toml:"status"`

	CreatedAt  time.Time `toml:"created_at"`
	StartedAt  time.Time `toml:"started_at,omitempty"`
	FinishedAt time.Time `toml:"finished_at,omitempty"` // the command exited
	EndedAt    time.Time `toml:"ended_at,omitempty"`    // the terminal status was claimed

	// StartedBoot is the monitor's CLOCK_BOOTTIME (see BootTime) at the
	// claim queued → running, 0 when not recorded. Same-boot ages are
	// measured from it, not from StartedAt: a wall-clock jump moves
	// StartedAt's age, never this one's.
	StartedBoot time.Duration `toml:"started_boottime,omitzero"`
	// ProgressAt and ProgressBoot are the monitor's last progress stamp,
	// written by compare-and-swap (status still running, monitor still
	// this process) when it records the exit code and immediately before
	// each finalize step. Tier 2 measures a live monitor's stall from them.
	ProgressAt   time.Time     `toml:"progress_at,omitempty"`
	ProgressBoot time.Duration `toml:"progress_boottime,omitzero"`
	// FinalizeStep is the number (from 1) of the last finalize step the
	// monitor started, 0 before the first.
	FinalizeStep int `toml:"finalize_step,omitzero"`
	// Adoptions counts the monitors that took the job over from a dead one
	// (Store.Adopt), so that adopters that keep dying are not replaced
	// forever.
	Adoptions int `toml:"adoptions,omitzero"`

	// Monitor is the process that claimed the job and watches its command;
	// it is written in the same write as queued → running, so a running job
	// always has one.
	Monitor procid.Identity `toml:"monitor,omitempty"`
	// Command is the stage command's process, the leader of process group
	// PGID; zero until stamped.
	Command procid.Identity `toml:"command,omitempty"`
	PGID    int             `toml:"pgid,omitzero"`
	// Finalizer leads the process group of the finalize step running now
	// (zero when none has run): a live one means the monitor's work goes on.
	Finalizer procid.Identity `toml:"finalizer,omitempty"`

	// MergeAuthor signs a merge stage's merge commit, with StartedAt as its
	// date; both are fixed by the claim, so a rebuilt merge commit has the
	// same id.
	MergeAuthor Signature `toml:"merge_author,omitempty"`
	// Merging is the commit a merge stage merges — the one its gates
	// judged and passed — written before the merge starts, so that a
	// reaper finding the job's monitor dead can tell from the graph
	// whether the merge landed.
	Merging string `toml:"merging,omitempty"`
	// PrevCommit is the commit the previous stage's gates judged and
	// passed (written when that stage advanced to this job). The job works
	// on whatever its branch is when it starts; this says what was checked.
	PrevCommit string `toml:"prev_commit,omitempty"`

	// ExitCode is nil until the command's exit has been recorded.
	ExitCode *int `toml:"exit_code,omitempty"`

	Gates   []GateResult `toml:"gates,omitempty"`
	Reason  string       `toml:"reason,omitempty"`
	EndedBy string       `toml:"ended_by,omitempty"`
	// NextJob is the id of the job this one advanced to, written in the same
	// write as the terminal status so an advance lost to a crash can be
	// detected and repaired.
	NextJob string `toml:"next_job,omitempty"`
	// SharedRun, set only on a job of the shared queue (remote mode), is
	// the run id of this machine's claim of it on the remote
	// (remotejob.Claimed.Run): the local job is how this machine runs it.
	// Absent: a local job, as in every record written before remote mode.
	SharedRun string `toml:"shared_run,omitempty"`

	// History is every status change of this job, in order. The event log
	// carries the same entries for all jobs; a crash between the record write
	// and the log append can lose a log line but never a history entry.
	History []Transition `toml:"history,omitempty"`
}

// Signature is a git identity.
type Signature struct {
	Name  string `toml:"name,omitempty"`
	Email string `toml:"email,omitempty"`
}

// GateResult is the outcome of one quality gate check.
type GateResult struct {
	Name   string    `toml:"name" json:"name"`
	Passed bool      `toml:"passed" json:"passed"`
	Detail string    `toml:"detail,omitempty" json:"detail,omitempty"`
	At     time.Time `toml:"at" json:"at"`
	// Commit and Target are the commit ids the gate judged: the branch's
	// tip and the target's, both resolved once before the stage's first
	// gate, so every gate of one evaluation judges the same pair (empty
	// when the ref did not resolve). A merge merges only such a commit.
	Commit string `toml:"commit,omitempty" json:"commit,omitempty"`
	Target string `toml:"target,omitempty" json:"target,omitempty"`
}

// Transition is one status change of one job.
type Transition struct {
	At     time.Time `toml:"at" json:"time"`
	Job    string    `toml:"-" json:"job"`
	Actor  string    `toml:"actor" json:"actor"`
	PID    int       `toml:"pid" json:"pid"`
	Host   string    `toml:"host" json:"host"`
	From   Status    `toml:"from,omitempty" json:"from"`
	To     Status    `toml:"to" json:"to"`
	Reason string    `toml:"reason,omitempty" json:"reason,omitempty"`
}

// Clone returns a deep copy, so a mutation can be attempted and thrown away.
func (j *Job) Clone() *Job {
	c := *j
	if j.ExitCode != nil {
		ec := *j.ExitCode
		c.ExitCode = &ec
	}
	c.Gates = append([]GateResult(nil), j.Gates...)
	c.History = append([]Transition(nil), j.History...)
	return &c
}

func encodeJob(j *Job) ([]byte, error) {
	// Every string is escaped (statefile.EscapeText) so that any bytes in
	// it — a path, a Latin-1 user.name, binary gate output — read back.
	data, err := statefile.EncodeTOML(j)
	if err != nil {
		return nil, fmt.Errorf("encode job %s: %w", j.ID, err)
	}
	return data, nil
}

// DecodeJob parses a job record and checks what every reader relies on: a
// valid id and status.
func DecodeJob(data []byte) (*Job, error) {
	var j Job
	if _, err := statefile.DecodeTOML(data, &j); err != nil {
		return nil, err
	}
	if err := ValidateJobID(j.ID); err != nil {
		// Reported as a damaged record, not as a bad name the user typed.
		return nil, fmt.Errorf("record has no valid id: %v", err)
	}
	if !j.Status.Valid() {
		return nil, fmt.Errorf("job %s: unknown status %q", j.ID, j.Status)
	}
	// What every write of the store includes; a record missing it was not
	// written whole by orch-hooks.
	if j.Version < 1 || j.CreatedAt.IsZero() {
		return nil, fmt.Errorf("job %s: record lacks version or created_at", j.ID)
	}
	if n := len(j.History); n > 0 && j.History[n-1].To != j.Status {
		return nil, fmt.Errorf("job %s: status %s but the last transition in its history is to %q", j.ID, j.Status, j.History[n-1].To)
	}
	for i := range j.History {
		j.History[i].Job = j.ID
	}
	return &j, nil
}

// Note appends t to the event log for what is not a change of a local
// record — remote mode's claims, expiries and settles of shared jobs —
// filling in the time, actor, pid and host when they are unset. Best
// effort, as every event line: the remote's record is the truth.
func (s *Store) Note(t Transition) {
	base := s.transition(t.Job, t.From, t.To, t.Reason)
	if t.At.IsZero() {
		t.At = base.At
	}
	if t.Actor == "" {
		t.Actor = base.Actor
	}
	if t.PID == 0 {
		t.PID = base.PID
	}
	if t.Host == "" {
		t.Host = base.Host
	}
	t.Reason = base.Reason
	s.logEvent(t)
}
