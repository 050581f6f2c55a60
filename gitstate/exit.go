package gitstate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ExitPath is where the exit-status recorder of job id's command writes the
// command's exit status (exit/<id>): the record of the outcome that
// survives the command's monitor. The recorder is a shell in the command's
// process group (see pipeline), so it outlives a monitor killed with
// SIGKILL and dies with the group when the group is killed.
func (s *Store) ExitPath(id string) string { return filepath.Join(s.dir, exitDir, id) }

// PrepareExit makes sure the recorder of job id can create its exit file:
// the directory exists (a state dir made by an older version lacks it) and
// no file is there yet (the recorder creates it exclusively, so a leftover
// or planted one would stop it).
func (s *Store) PrepareExit(id string) error {
	if err := ValidateJobID(id); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(s.dir, exitDir), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("job %s: exit status dir: %w%s", id, err, statefile.PermissionHint(err, filepath.Join(s.dir, exitDir)))
	}
	if err := statefile.CheckDir(filepath.Join(s.dir, exitDir)); err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	return s.RemoveExit(id)
}

// RemoveExit removes job id's exit file: once the exit code is in the
// record, the record is the truth.
func (s *Store) RemoveExit(id string) error {
	err := os.Remove(s.ExitPath(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("job %s: remove exit status file: %w", id, err)
	}
	return nil
}

// RecordedExit reads the exit status the recorder of job id's command
// wrote. ok is false when there is none: no file, or one not written whole
// (the recorder writes "N\n" in one write, so a file without its newline
// was cut short by the recorder's death). A file that is there but is not
// a regular file, or holds anything else, is an error naming it, never an
// exit status. Callers read it only once the recorder is dead by identity:
// a live recorder may not have written yet.
func (s *Store) RecordedExit(id string) (code int, ok bool, err error) {
	if err := ValidateJobID(id); err != nil {
		return 0, false, err
	}
	return readExit(id, s.ExitPath(id))
}

// StepExitPath is where the recorder of job id's finalize step k (from 1)
// writes the step's exit status (exit/<id>+step<k>; '+' is not in a job
// id, so no job's file is another's), as the command's recorder does
// (ExitPath): the step's outcome survives its monitor.
func (s *Store) StepExitPath(id string, k int) string {
	return filepath.Join(s.dir, exitDir, fmt.Sprintf("%s+step%d", id, k))
}

// RecordedStepExit is RecordedExit for finalize step k of job id.
func (s *Store) RecordedStepExit(id string, k int) (code int, ok bool, err error) {
	if err := ValidateJobID(id); err != nil {
		return 0, false, err
	}
	return readExit(id, s.StepExitPath(id, k))
}

// RemoveStepExits removes the exit files of job id's finalize steps: once
// the job has ended, its record is the truth.
func (s *Store) RemoveStepExits(id string) error {
	if err := ValidateJobID(id); err != nil {
		return err
	}
	// The directory holds a file or two per running job: listing it is
	// cheap, and (unlike a glob) blind to what the state dir's path holds.
	ents, err := os.ReadDir(filepath.Join(s.dir, exitDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("job %s: list exit status files: %w", id, err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), id+"+step") {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, exitDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("job %s: remove a finalize step's exit status file: %w", id, err)
		}
	}
	return nil
}

// readExit reads an exit status file of job id at path (RecordedExit).
func readExit(id, path string) (code int, ok bool, err error) {
	data, err := statefile.ReadFile(path, 64)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("job %s: exit status file: %w", id, withoutPath(err, path))
	}
	line, whole := strings.CutSuffix(string(data), "\n")
	if !whole {
		return 0, false, nil
	}
	n, err := strconv.Atoi(line)
	if err != nil || n < 0 || n > 255 {
		return 0, false, fmt.Errorf("job %s: exit status file %s holds %q, not an exit status; remove it", id, path, data)
	}
	return n, true, nil
}

// ErrNotAdoptable is returned (wrapped) by Adopt when the job cannot be
// taken over: it is not running, its monitor changed, or its monitor is not
// confirmed dead by identity.
var ErrNotAdoptable = errors.New("not adoptable")

// Adopt makes self the monitor of running job id in place of old, its
// monitor confirmed dead: a compare-and-swap under the job's lock, "set
// monitor = self only if the job is still running, its monitor is still
// old, and old is dead by identity (procid.Check)". Of any number of
// adopters racing for the same job exactly one wins; the others get an
// error wrapping ErrNotAdoptable and the current record, and nothing is
// written. The winner's write also stamps progress (now), so tier 2 of the
// reaper measures a stall from the adoption, not from the dead monitor's
// last step, and counts the adoption (Job.Adoptions). A dead monitor can
// write nothing more: every monitor write checks, under the same lock,
// that it is still the job's monitor.
func (s *Store) Adopt(ctx context.Context, id string, old, self procid.Identity) (*Job, error) {
	var why string
	j, err := s.Update(ctx, id, "", func(j *Job) error {
		switch {
		case j.Status != Running:
			why = fmt.Sprintf("job %s is %s", id, j.Status)
			return ErrSkip
		case j.Monitor != old:
			why = fmt.Sprintf("job %s: its monitor is now %s, not %s (adopted by another)", id, j.Monitor, old)
			return ErrSkip
		}
		l, err := procid.Check(old)
		if err != nil || l != procid.Dead {
			why = fmt.Sprintf("job %s: its monitor %s is %s, not confirmed dead", id, old, l)
			if err != nil {
				why += ": " + err.Error()
			}
			return ErrSkip
		}
		j.Monitor = self
		j.Adoptions++
		j.ProgressAt = s.now()
		j.ProgressBoot, _ = BootTime()
		return nil
	})
	if errors.Is(err, ErrSkip) {
		return j, fmt.Errorf("%s: %w", why, ErrNotAdoptable)
	}
	return j, err
}
