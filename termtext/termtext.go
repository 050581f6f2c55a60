// Package termtext makes text that came from somewhere else (a job's
// output, a gate's detail, a branch, a holder name, a path) safe to print
// for a person: no byte of it can drive the terminal. DESIGN.md "State on
// disk": text printed for a person has control characters escaped; agent
// output never drives the terminal.
//
// The escaped forms:
//
//   - a C0 control character (U+0000–U+001F) as \xNN, except carriage
//     return as \r and, where Line escapes them, tab and newline as \t
//     and \n;
//   - DEL and the C1 controls (U+007F–U+009F) as \u00NN — the JSON spelling,
//     so JSON output passed through a Writer stays valid JSON that decodes
//     to the same text;
//   - a byte that is not part of valid UTF-8 as \xNN.
//
// Everything else, backslashes included, is left as it is: the result is
// for reading, not for parsing back.
package termtext

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// Line returns s escaped to print on one line: every control character,
// newline and tab included, is escaped.
func Line(s string) string {
	if clean(s, false) {
		return s
	}
	var b strings.Builder
	escape(&b, []byte(s), false)
	return b.String()
}

// Text returns s escaped for multi-line output: newline and tab are kept,
// every other control character is escaped.
func Text(s string) string {
	if clean(s, true) {
		return s
	}
	var b strings.Builder
	escape(&b, []byte(s), true)
	return b.String()
}

// clean reports whether s needs no escaping.
func clean(s string, keepLines bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 {
			return !hasUnsafeUTF8(s[i:])
		}
		if c < 0x20 || c == 0x7f {
			if keepLines && (c == '\n' || c == '\t') {
				continue
			}
			return false
		}
	}
	return true
}

func hasUnsafeUTF8(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return true
		}
	}
	return false
}

func escape(b *strings.Builder, p []byte, keepLines bool) {
	for len(p) > 0 {
		r, size := utf8.DecodeRune(p)
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(b, `\x%02x`, p[0])
		case r == '\n' || r == '\t':
			if keepLines {
				b.WriteRune(r)
			} else if r == '\n' {
				b.WriteString(`\n`)
			} else {
				b.WriteString(`\t`)
			}
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20:
			fmt.Fprintf(b, `\x%02x`, r)
		case r >= 0x7f && r <= 0x9f:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			b.Write(p[:size])
		}
		p = p[size:]
	}
}

// Writer escapes everything written through it as Text does. A UTF-8
// sequence split across two writes is held back until it is complete (or
// shown as invalid bytes when the next write does not complete it, or at
// Flush). Safe for concurrent use.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	pending []byte // an incomplete UTF-8 sequence at the end of the last write
}

// NewWriter returns a Writer that escapes into w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Raw is the writer underneath: for output that is meant to reach the
// terminal as it is (the live view's own escape codes, a command's output
// the user ran under orch-hooks).
func (t *Writer) Raw() io.Writer { return t.w }

// Write escapes p and writes it. It reports len(p) on success.
func (t *Writer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(t.pending) > 0 {
		p = append(t.pending, p...)
		t.pending = nil
	}
	if k := incompleteTail(p); k > 0 {
		t.pending = append([]byte(nil), p[len(p)-k:]...)
		p = p[:len(p)-k]
	}
	if len(p) == 0 {
		return n, nil
	}
	var b strings.Builder
	escape(&b, p, true)
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return n, nil
}

// Flush writes a held-back incomplete sequence, escaped.
func (t *Writer) Flush() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) == 0 {
		return nil
	}
	var b strings.Builder
	escape(&b, t.pending, true)
	t.pending = nil
	_, err := io.WriteString(t.w, b.String())
	return err
}

// incompleteTail is the length of a UTF-8 sequence at the end of p that
// has started but not ended (0 when there is none): a lead byte followed by
// fewer continuation bytes than it announces.
func incompleteTail(p []byte) int {
	for k := 1; k <= 3 && k <= len(p); k++ {
		c := p[len(p)-k]
		if c&0xc0 == 0x80 { // continuation byte: look further back
			continue
		}
		need := 0
		switch {
		case c&0xe0 == 0xc0:
			need = 2
		case c&0xf0 == 0xe0:
			need = 3
		case c&0xf8 == 0xf0:
			need = 4
		}
		if need > k && !utf8.FullRune(p[len(p)-k:]) {
			return k
		}
		return 0
	}
	return 0
}
