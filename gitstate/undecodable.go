package gitstate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// ErrDecodable is returned (wrapped) by EndUndecodable when the record is
// not a regular file that fails to decode: it decodes (use Update), or it
// cannot be read at all — a FIFO, a symlink, a permission, a read error —
// which may be transient or the user's doing, and is never overwritten.
var ErrDecodable = errors.New("the record is not an undecodable regular file")

// CorruptPath is where EndUndecodable keeps the n-th undecodable record of
// job id it replaced: beside the record, <id>.toml.corrupt-<n>. Listings
// skip these files (their names do not end in .toml) and gc never removes
// them: nothing of a damaged record is lost.
func (s *Store) CorruptPath(id string, n int) string {
	return s.RecordPath(id) + ".corrupt-" + strconv.Itoa(n)
}

// EndUndecodable ends job id whose record is a regular file that exists but
// does not decode (written by hand, by an older version that stored bytes
// that are not UTF-8, or damaged), so that cancel and the reaper can always
// end a job: nothing else can write its record, because every Update starts
// by reading it.
//
// Under the job's lock it reads the record again; anything but a regular
// file that fails to decode is refused with ErrDecodable and left alone.
// The record's bytes are first kept, exactly, in a new CorruptPath file
// (written and fsynced before the record is replaced). Then a new record is
// written: what a lenient reading of the old bytes (bytes that are not
// UTF-8 replaced by U+FFFD) salvages of the job (task, stage, branch,
// target, attempt, processes, history), with status to — or, when the
// salvaged status is already terminal, that status, so an ended job is
// repaired but never ended twice — and reason, which names the kept file.
// ended reports whether this call ended the job (false: it had ended). The
// returned job carries the salvaged process identities, so the caller can
// stop the job's process groups (they are judged by identity, never by pid
// alone).
func (s *Store) EndUndecodable(ctx context.Context, id string, to Status, endedBy, reason string) (j *Job, ended bool, err error) {
	if err := ValidateJobID(id); err != nil {
		return nil, false, err
	}
	if !to.Terminal() {
		return nil, false, fmt.Errorf("job %s: EndUndecodable to %s, want a terminal status", id, to)
	}
	unlock, err := s.Lock(ctx, id)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	path := s.RecordPath(id)
	data, err := statefile.ReadFile(path, statefile.MaxSizeDefault)
	if err != nil {
		return nil, false, fmt.Errorf("job %s: %w: %v", id, ErrDecodable, err)
	}
	decodeErr := func() error {
		j, err := DecodeJob(data)
		if err == nil && j.ID != id {
			err = fmt.Errorf("record holds job %q, file is named for %q", j.ID, id)
		}
		return err
	}()
	if decodeErr == nil {
		return nil, false, fmt.Errorf("job %s: %w: it decodes", id, ErrDecodable)
	}
	kept, err := s.keepCorrupt(id, data)
	if err != nil {
		return nil, false, err
	}
	old := salvage(data)
	now := s.now()
	j = &Job{
		Version: RecordVersion, ID: id,
		Task: old.Task, Stage: old.Stage, Branch: old.Branch, Target: old.Target, Attempt: old.Attempt,
		CreatedAt: old.CreatedAt, StartedAt: old.StartedAt, FinishedAt: old.FinishedAt,
		Monitor: old.Monitor, Command: old.Command, PGID: old.PGID, Finalizer: old.Finalizer,
		MergeAuthor: old.MergeAuthor, ExitCode: old.ExitCode, Gates: old.Gates, NextJob: old.NextJob,
		History: old.History,
	}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = now
	}
	from := old.Status
	if !from.Valid() {
		from = ""
	}
	ended = !from.Terminal()
	if !ended {
		to = from
	}
	j.Status = to
	note := fmt.Sprintf("the record could not be decoded (%v); its bytes are kept in %s", decodeErr, kept)
	j.Reason = reason + ": " + note
	j.EndedBy = endedBy
	if !ended {
		j.Reason, j.EndedBy = old.Reason, old.EndedBy
	}
	j.EndedAt = old.EndedAt
	if j.EndedAt.IsZero() {
		j.EndedAt = now
	}
	// A salvaged history is kept only if it leads to the status written:
	// readers check that the last transition is to the record's status.
	if n := len(j.History); n > 0 && j.History[n-1].To != from {
		j.History = nil
	}
	if ended || len(j.History) == 0 {
		t := s.transition(id, from, to, reason+": "+note)
		t.At = j.EndedAt
		j.History = append(j.History, t)
	}
	out, err := s.encode(j)
	if err != nil {
		return nil, false, err
	}
	if err := statefile.Replace(path, out); err != nil {
		return nil, false, fmt.Errorf("job %s: %w", id, err)
	}
	os.Remove(s.activePath(id))
	os.Remove(filepath.Join(s.dir, runningDir, id))
	if ended {
		s.logEvent(j.History[len(j.History)-1])
	}
	return j, ended, nil
}

// keepCorrupt writes data to the first free CorruptPath of id, exclusively
// and durably, and returns its path.
func (s *Store) keepCorrupt(id string, data []byte) (string, error) {
	for n := 1; n < 1000; n++ {
		p := s.CorruptPath(id, n)
		created, err := statefile.Create(p, data)
		if err != nil {
			return "", fmt.Errorf("job %s: keep the undecodable record aside: %w", id, err)
		}
		if created {
			return p, nil
		}
	}
	return "", fmt.Errorf("job %s: keep the undecodable record aside: %s.corrupt-1 to -999 all exist; move them away", id, s.RecordPath(id))
}

// salvage reads what it can of a record that does not decode: bytes that
// are not UTF-8 are replaced by U+FFFD and each field that still decodes is
// kept. Fields it cannot read stay zero.
func salvage(data []byte) Job {
	var j Job
	text := strings.ToValidUTF8(string(data), "\uFFFD")
	if _, err := toml.Decode(text, &j); err != nil {
		return Job{}
	}
	statefile.UnescapeStrings(&j)
	return j
}
