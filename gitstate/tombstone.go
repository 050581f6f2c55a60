package gitstate

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// tombstonesDir holds one empty file per job id gc collected. It is only
// ever looked up by name (Collected), never listed, so its size costs no
// command anything: a reaper pass, status and dispatch never read it.
const tombstonesDir = "tombstones"

// ErrCollected is returned (wrapped) by Create for a job id that gc
// collected: the job ran (or was cancelled) and its record is gone, and a
// job id runs at most once, so it is never created again.
var ErrCollected = errors.New("job id already ran and its record was collected by gc")

// TombstonePath is the path of job id's tombstone.
func (s *Store) TombstonePath(id string) string { return filepath.Join(s.dir, tombstonesDir, id) }

// Tombstone records, durably, that job id is being collected: gc writes it
// before it removes the record, so a crash between the two leaves both (the
// record still answers for the id, and the next gc finishes), never neither.
// It is idempotent. The tombstone is an empty file: a directory entry and an
// inode, no data blocks.
func (s *Store) Tombstone(id string) error {
	if err := ValidateJobID(id); err != nil {
		return err
	}
	path := s.TombstonePath(id)
	// O_NONBLOCK: a FIFO planted under the name fails at once instead of
	// blocking; O_NOFOLLOW: a symlink is refused, never written through.
	flags := os.O_WRONLY | os.O_CREATE | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	f, err := os.OpenFile(path, flags, statefile.Mode)
	if errors.Is(err, fs.ErrNotExist) {
		// Made on demand: state dirs from before tombstones lack it.
		if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
			f, err = os.OpenFile(path, flags, statefile.Mode)
		}
	}
	if err != nil {
		return fmt.Errorf("job %s: write tombstone: %w", id, err)
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return fmt.Errorf("job %s: write tombstone: %w", id, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("job %s: tombstone %s is not a regular file; remove it and run gc again", id, path)
	}
	if err := statefile.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("job %s: write tombstone: %w", id, err)
	}
	return nil
}

// Collected reports whether job id has a tombstone. Anything under the
// tombstone's name counts, whatever its type: when in doubt the id stays
// spent, because running a job twice is the failure this guards against.
// An error other than "no such file" is returned as an error, never as
// "not collected".
func (s *Store) Collected(id string) (bool, error) {
	if err := ValidateJobID(id); err != nil {
		return false, err
	}
	_, err := os.Lstat(s.TombstonePath(id))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("job %s: look up tombstone: %w", id, err)
	}
}

// lookupForCreate is Create's check of an id: the existing job if its record
// is there, an error wrapping ErrCollected if gc collected it, (nil, nil) if
// the id is free. The record is read first: gc writes the tombstone before
// it removes the record, so an id whose record is found missing here and
// that was collected has its tombstone already.
func (s *Store) lookupForCreate(id string) (*Job, error) {
	existing, err := s.Get(id)
	if err == nil {
		return existing, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	collected, err := s.Collected(id)
	if err != nil {
		return nil, err
	}
	if collected {
		return nil, fmt.Errorf("job %s: %w (tombstone %s)", id, ErrCollected, s.TombstonePath(id))
	}
	return nil, nil
}
