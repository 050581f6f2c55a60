package reaper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/termtext"
)

// stateFile is the reaper's own record in the state dir; its lock guards
// every read-modify-write of it.
const (
	stateFile = "reaper.toml"
	stateLock = "reaper-state"
)

// State is what the reaper keeps between passes: the streak of dead
// observations of each running job, the first sightings of job timestamps
// that lay in the future, and the snapshot of the last pass.
type State struct {
	Version  int               `toml:"version"`
	Streaks  map[string]Streak `toml:"streaks,omitempty"`
	Seen     map[string]Seen   `toml:"seen,omitempty"`
	LastPass *Snapshot         `toml:"last_pass,omitempty"`
}

// Streak counts consecutive passes that found every process of a job dead.
type Streak struct {
	Count int       `toml:"count"`
	Last  time.Time `toml:"last"` // when the last observation was counted
	// LastBoot is the reaper's CLOCK_BOOTTIME at Last, on boot BootID: on
	// the same boot the interval is measured with it, so a wall-clock jump
	// neither freezes nor hurries the streak.
	LastBoot time.Duration `toml:"last_boottime,omitzero"`
	BootID   string        `toml:"boot_id,omitempty"`
}

// Seen holds, per running job, when a pass first saw one of its
// timestamps lying in the future (the clock moved back, or the job's host
// runs ahead). Ages that would be measured from such a stamp are measured
// from its first sighting instead: never "wait until then".
type Seen struct {
	Started  *Sighting `toml:"started,omitempty"`
	Progress *Sighting `toml:"progress,omitempty"`
}

// Sighting is the first pass that saw Stamp in the future.
type Sighting struct {
	Stamp  time.Time     `toml:"stamp"`
	At     time.Time     `toml:"at"`
	AtBoot time.Duration `toml:"at_boottime,omitzero"`
	BootID string        `toml:"boot_id,omitempty"`
}

// Snapshot is the report of one pass, kept as the last pass and shown by
// status.
type Snapshot struct {
	At         time.Time `toml:"at" json:"at"`
	DurationMS int64     `toml:"duration_ms" json:"duration_ms"`
	DryRun     bool      `toml:"dry_run" json:"dry_run"`
	Disabled   bool      `toml:"disabled" json:"disabled"`
	Scanned    int       `toml:"scanned" json:"scanned"`
	Tier1      int       `toml:"tier1" json:"tier1"`
	Tier2      int       `toml:"tier2" json:"tier2"`
	Tier3      int       `toml:"tier3" json:"tier3"`
	Observed   int       `toml:"observed" json:"observed"`
	Repaired   int       `toml:"repaired" json:"repaired"`
	Deferred   int       `toml:"deferred" json:"deferred"`
	// Adopted counts the jobs the pass started a new monitor for (their
	// monitor dead, their command alive or its exit status recorded).
	Adopted         int         `toml:"adopted,omitzero" json:"adopted"`
	LeasesReclaimed int         `toml:"leases_reclaimed" json:"leases_reclaimed"`
	Actions         []Action    `toml:"actions,omitempty" json:"actions"`
	Errors          []PassError `toml:"errors,omitempty" json:"errors"`
	// Running is what the pass saw of each running job and did about it,
	// when asked (Options.Explain); not kept in the state file.
	Running []Explanation `toml:"-" json:"running,omitempty"`
}

// Action is one thing a pass did (or, dry, would do). An observation only
// counted towards a tier-1 streak; it changed no job.
type Action struct {
	Job         string `toml:"job,omitempty" json:"job,omitempty"`
	Lease       string `toml:"lease,omitempty" json:"lease,omitempty"`
	Tier        string `toml:"tier" json:"tier"`
	Outcome     string `toml:"outcome" json:"outcome"`
	Observation bool   `toml:"observation,omitempty" json:"observation,omitempty"`
}

// String is the action as one line for a person: "<job>: <tier>:
// <outcome>", or "lease <target>: ..." for a lease, with control characters
// escaped (termtext.Line): an outcome can quote a holder name or a gate's
// output.
func (a Action) String() string {
	what := a.Job
	if a.Lease != "" {
		what = "lease " + a.Lease
	}
	return termtext.Line(what + ": " + a.Tier + ": " + a.Outcome)
}

// PassError is an error on one unit of a pass; the pass went on.
type PassError struct {
	Job     string `toml:"job,omitempty" json:"job,omitempty"`
	Lease   string `toml:"lease,omitempty" json:"lease,omitempty"`
	Path    string `toml:"path,omitempty" json:"path,omitempty"`
	Message string `toml:"message" json:"message"`
}

func statePath(stateDir string) string { return filepath.Join(stateDir, stateFile) }

// LoadState reads the reaper's state. A missing file is an empty state; a
// file that cannot be parsed is an error naming it (it is left in place).
func LoadState(stateDir string) (*State, error) {
	st := &State{Version: 1, Streaks: map[string]Streak{}, Seen: map[string]Seen{}}
	data, err := statefile.ReadFile(statePath(stateDir), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reaper state: %w", err)
	}
	if _, err := statefile.DecodeTOML(data, st); err != nil {
		return nil, fmt.Errorf("reaper state %s: %w", statePath(stateDir), err)
	}
	if st.Streaks == nil {
		st.Streaks = map[string]Streak{}
	}
	if st.Seen == nil {
		st.Seen = map[string]Seen{}
	}
	if p := st.LastPass; p != nil {
		// Empty lists are not written; read them back as empty, not null.
		if p.Actions == nil {
			p.Actions = []Action{}
		}
		if p.Errors == nil {
			p.Errors = []PassError{}
		}
	}
	return st, nil
}

// updateState applies fn to the state under its lock and writes it back
// atomically. An unreadable state file is moved aside (kept, with a
// .corrupt-<time> suffix, and reported) and a fresh state started: streaks
// restart, which only delays a tier-1 reap.
func updateState(ctx context.Context, stateDir string, fn func(*State) error) error {
	unlock, err := statefile.Lock(ctx, filepath.Join(stateDir, "locks", stateLock+".lock"))
	if err != nil {
		return fmt.Errorf("reaper state: %w", err)
	}
	defer unlock()
	st, loadErr := LoadState(stateDir)
	if loadErr != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", statePath(stateDir), time.Now().UnixNano())
		if err := os.Rename(statePath(stateDir), aside); err != nil {
			return fmt.Errorf("%v; moving it aside: %w", loadErr, err)
		}
		loadErr = fmt.Errorf("%v (moved to %s, state restarted)", loadErr, aside)
		st = &State{Version: 1, Streaks: map[string]Streak{}, Seen: map[string]Seen{}}
	}
	if err := fn(st); err != nil {
		return err
	}
	// Error messages and reasons may carry any bytes: escaped so they read back.
	data, err := statefile.EncodeTOML(st)
	if err != nil {
		return fmt.Errorf("reaper state: %w", err)
	}
	if err := statefile.Replace(statePath(stateDir), data); err != nil {
		return fmt.Errorf("reaper state: %w", err)
	}
	return loadErr
}
