package termtext

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLineAndText(t *testing.T) {
	for _, c := range []struct{ in, line, text string }{
		{"plain text, ü → 日本", "plain text, ü → 日本", "plain text, ü → 日本"},
		{"a\nb\tc\rd", `a\nb\tc\rd`, "a\nb\tc\\rd"},
		{"\x1b]52;c;aGVsbG8=\x07", `\x1b]52;c;aGVsbG8=\x07`, `\x1b]52;c;aGVsbG8=\x07`},
		{"\x1b[2J\x1b]0;title\x07", `\x1b[2J\x1b]0;title\x07`, `\x1b[2J\x1b]0;title\x07`},
		{"csi \u009b31m c1", `csi \u009b31m c1`, `csi \u009b31m c1`},
		{"del\x7f nul\x00", `del\u007f nul\x00`, `del\u007f nul\x00`},
		{"caf\xe9.txt", `caf\xe9.txt`, `caf\xe9.txt`},
		{"cut \xe6\x97", `cut \xe6\x97`, `cut \xe6\x97`},
		{"\xc2", `\xc2`, `\xc2`},
		{`back\slash`, `back\slash`, `back\slash`},
		{"nel \u0085 is C1", `nel \u0085 is C1`, `nel \u0085 is C1`},
		{"\u00a0 is not", "\u00a0 is not", "\u00a0 is not"},
	} {
		if got := Line(c.in); got != c.line {
			t.Errorf("Line(%q) = %q, want %q", c.in, got, c.line)
		}
		if got := Text(c.in); got != c.text {
			t.Errorf("Text(%q) = %q, want %q", c.in, got, c.text)
		}
	}
}

// TestWriterSplitRunes: a rune cut across writes prints whole; a sequence
// left incomplete is escaped at Flush.
func TestWriterSplitRunes(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	for _, p := range []string{"日", "\xe6", "\x9c", "\xac x\x1b", "[2J\xc2", "\x9b end \xe6\x97"} {
		if n, err := w.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := `日本 x\x1b[2J\u009b end \xe6\x97`; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

// TestWriterKeepsJSON: JSON written through a Writer decodes to the same
// text, and carries no raw C1 or DEL.
func TestWriterKeepsJSON(t *testing.T) {
	in := "gate failed:\n\x1b]52;c;eA==\x07 \u009b2J \x7f tab\there"
	var out bytes.Buffer
	w := NewWriter(&out)
	if err := json.NewEncoder(w).Encode(map[string]string{"reason": in}); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out.Bytes(), []byte("\u009b")) || bytes.ContainsAny(out.Bytes(), "\x7f\x1b\x07") {
		t.Fatalf("raw control bytes in %q", out.String())
	}
	var back map[string]string
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatalf("not JSON any more: %v: %q", err, out.String())
	}
	if back["reason"] != in {
		t.Errorf("decoded %q, want %q", back["reason"], in)
	}
}

// unsafe reports why s could drive a terminal, or "".
func unsafe(s string, keepLines bool) string {
	if !utf8.ValidString(s) {
		return "invalid UTF-8"
	}
	for _, r := range s {
		if keepLines && (r == '\n' || r == '\t') {
			continue
		}
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return "control character " + string(rune(r))
		}
	}
	return ""
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "a\nb", "\x1b]52;c;x\x07", "\xc2\x9b", "caf\xe9", "日本\xe6\x97", "\x7f\x00\r"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, cut int) {
		if why := unsafe(Line(s), false); why != "" {
			t.Fatalf("Line(%q) = %q: %s", s, Line(s), why)
		}
		if strings.Contains(Line(s), "\n") {
			t.Fatalf("Line(%q) has a newline", s)
		}
		if why := unsafe(Text(s), true); why != "" {
			t.Fatalf("Text(%q) = %q: %s", s, Text(s), why)
		}
		if utf8.ValidString(s) && unsafe(s, true) == "" && Text(s) != s {
			t.Fatalf("Text changed clean text %q to %q", s, Text(s))
		}
		// Through a Writer in two pieces: the same as Text of the whole.
		if cut < 0 {
			cut = -cut
		}
		cut %= len(s) + 1
		var out bytes.Buffer
		w := NewWriter(&out)
		w.Write([]byte(s[:cut]))
		w.Write([]byte(s[cut:]))
		w.Flush()
		if why := unsafe(out.String(), true); why != "" {
			t.Fatalf("Writer(%q | %q) = %q: %s", s[:cut], s[cut:], out.String(), why)
		}
		if out.String() != Text(s) {
			t.Fatalf("Writer(%q | %q) = %q, Text = %q", s[:cut], s[cut:], out.String(), Text(s))
		}
	})
}
