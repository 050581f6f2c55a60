package gitstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// The event log, events.jsonl: one JSON line per transition of any job,
// appended after the record that holds the transition is durable.

// logEvent appends one line to the event log. The record is already durable,
// so a failure here is reported on stderr and does not fail the transition:
// the job's own history still holds it.
func (s *Store) logEvent(t Transition) {
	if err := s.appendEvent(t); err != nil {
		fmt.Fprintf(os.Stderr, "orch-hooks: warning: event log: %v (the job's record holds the change; the log lacks this line)\n", err)
	}
}

func (s *Store) appendEvent(t Transition) error {
	// Escaped as in a record: JSON would otherwise replace bytes that are
	// not UTF-8 by U+FFFD and the line would not read back as written.
	line, err := json.Marshal(statefile.EscapeStrings(t))
	if err != nil {
		return err
	}
	line = append(line, '\n')
	f, err := statefile.Open(s.EventsPath(), os.O_RDWR|os.O_APPEND|os.O_CREATE, statefile.Mode)
	if err != nil {
		return fmt.Errorf("%w%s", err, statefile.PermissionHint(err, s.EventsPath()))
	}
	// A line left cut short (see below) must not swallow this one: it
	// then starts on a line of its own.
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], fi.Size()-1); err == nil && last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}
	// One write call: O_APPEND places each line whole at the end even when
	// processes append at once.
	n, err := f.Write(line)
	if err != nil && n > 0 {
		// The disk filled up in the middle of the line: take the part
		// written back off, so the log keeps only whole lines (it then
		// lacks this one, as after a crash before the append).
		cutTail(f, line[:n])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// cutTail truncates f by len(tail) bytes if it still ends with tail, that
// is, if no other line was appended after it.
func cutTail(f *os.File, tail []byte) {
	fi, err := f.Stat()
	if err != nil || fi.Size() < int64(len(tail)) {
		return
	}
	got := make([]byte, len(tail))
	if _, err := f.ReadAt(got, fi.Size()-int64(len(tail))); err != nil || !bytes.Equal(got, tail) {
		return
	}
	f.Truncate(fi.Size() - int64(len(tail)))
}

// Events reads the whole event log; lines that do not parse are skipped.
func (s *Store) Events() ([]Transition, error) {
	evs, _, err := s.EventsFrom(0)
	return evs, err
}

// EventsFrom returns the events appended to the log at or after byte offset
// off, and the offset to read from next time. A line still being written is
// left for the next call.
func (s *Store) EventsFrom(off int64) ([]Transition, int64, error) {
	f, err := statefile.Open(s.EventsPath(), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, off, fmt.Errorf("read event log: %w", err)
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end <= off {
		return nil, min(off, end), err
	}
	buf := make([]byte, end-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil, off, fmt.Errorf("read event log: %w", err)
	}
	last := bytes.LastIndexByte(buf, '\n')
	if last < 0 {
		return nil, off, nil
	}
	var out []Transition
	for _, line := range bytes.Split(buf[:last], []byte{'\n'}) {
		if t, ok := parseEvent(line); ok {
			out = append(out, t)
		}
	}
	return out, off + int64(last) + 1, nil
}

// EventsEnd is the current size of the event log: EventsFrom(EventsEnd())
// returns only what is appended afterwards.
func (s *Store) EventsEnd() int64 {
	fi, err := os.Lstat(s.EventsPath())
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return fi.Size()
}

func parseEvent(line []byte) (Transition, bool) {
	var t Transition
	if len(line) == 0 || json.Unmarshal(line, &t) != nil || t.Job == "" {
		return t, false
	}
	statefile.UnescapeStrings(&t)
	return t, true
}

// backwardLimit bounds how much of the end of the event log a backward scan
// reads: what status and watch show comes from the newest lines, whatever
// the length of the history.
const backwardLimit = 1 << 20

// scanBackward calls fn on the events of the log from the newest back,
// reading a growing chunk at a time, until fn returns false or backwardLimit
// bytes have been read.
func (s *Store) scanBackward(fn func(Transition) bool) error {
	f, err := statefile.Open(s.EventsPath(), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read event log: %w", err)
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("read event log: %w", err)
	}
	var carry []byte // the start of a line cut by the previous chunk
	chunk := int64(16 << 10)
	for off := end; off > 0 && end-off < backwardLimit; chunk *= 2 {
		size := min(chunk, off)
		off -= size
		buf := make([]byte, size, size+int64(len(carry)))
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			return fmt.Errorf("read event log: %w", err)
		}
		buf = append(buf, carry...)
		// Unless at the start of the file, the first line may be cut.
		first := 0
		if off > 0 {
			first = bytes.IndexByte(buf, '\n') + 1
			carry = append([]byte(nil), buf[:first]...)
		}
		lines := bytes.Split(buf[first:], []byte{'\n'})
		for i := len(lines) - 1; i >= 0; i-- {
			if t, ok := parseEvent(lines[i]); ok && !fn(t) {
				return nil
			}
		}
	}
	return nil
}

// Recent returns up to n ended jobs, most recently ended first, found from
// the tail of the event log so that its cost does not grow with history.
// Jobs whose records are gone (gc) are skipped; records that cannot be read
// are reported in Unreadable.
func (s *Store) Recent(n int) (Listing, error) {
	var l Listing
	seen := map[string]bool{}
	err := s.scanBackward(func(t Transition) bool {
		if !t.To.Terminal() || seen[t.Job] {
			return true
		}
		seen[t.Job] = true
		j, err := s.Get(t.Job)
		var ue *UnreadableError
		switch {
		case errors.As(err, &ue):
			l.Unreadable = append(l.Unreadable, ue)
		case err == nil:
			l.Jobs = append(l.Jobs, j)
		}
		return len(l.Jobs)+len(l.Unreadable) < n
	})
	if err != nil {
		// The log is the index of ended jobs, not a record: one that cannot
		// be read (a FIFO or symlink in its place, say) is reported like an
		// unreadable record and the listing goes on without it.
		l.Unreadable = append(l.Unreadable, &UnreadableError{Path: s.EventsPath(), Err: withoutPath(errors.Unwrap(err), s.EventsPath())})
	}
	return l, nil
}

// TailEvents returns the last n events of the log (fewer when the log is
// shorter), oldest first.
func (s *Store) TailEvents(n int) ([]Transition, error) {
	var out []Transition
	err := s.scanBackward(func(t Transition) bool {
		out = append(out, t)
		return len(out) < n
	})
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, err
}
