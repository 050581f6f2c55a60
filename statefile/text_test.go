package statefile

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEscapeText: the stored form of any bytes is valid UTF-8 and reads back
// as the same bytes; ordinary text is stored as it is.
func FuzzEscapeText(f *testing.F) {
	for _, s := range []string{"", "plain", "caf\xe9.txt", "Jos\xe9", "\xff\xfe\x80", `back\slash`, TextEscapePrefix + "x", TextEscapePrefix + `\xe9`, "ünï", "\x00\x1b]52;c;\x07", `\x`, "a\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := EscapeText(s)
		if !utf8.ValidString(e) {
			t.Fatalf("EscapeText(%q) = %q is not UTF-8", s, e)
		}
		if got := UnescapeText(e); got != s {
			t.Fatalf("UnescapeText(EscapeText(%q)) = %q", s, got)
		}
		if EscapedLen(s) != len(e) {
			t.Fatalf("EscapedLen(%q) = %d, want %d", s, EscapedLen(s), len(e))
		}
		if utf8.ValidString(s) && !strings.HasPrefix(s, TextEscapePrefix) && e != s {
			t.Fatalf("ordinary text %q stored as %q", s, e)
		}
	})
}

// FuzzTOMLRoundTrip: a record whose strings (fields, nested structs,
// slices, map keys and values, pointers) hold any bytes encodes to TOML
// that decodes to the same record.
func FuzzTOMLRoundTrip(f *testing.F) {
	f.Add("caf\xe9", "\xff")
	f.Add("", TextEscapePrefix)
	f.Fuzz(func(t *testing.T, a, b string) {
		type inner struct {
			S  string            `toml:"s"`
			L  []string          `toml:"l"`
			M  map[string]string `toml:"m"`
			P  *string           `toml:"p"`
			Ty kind              `toml:"ty"`
		}
		type rec struct {
			A  string  `toml:"a"`
			In inner   `toml:"in"`
			Ls []inner `toml:"ls"`
		}
		in := inner{S: a, L: []string{a, b}, M: map[string]string{"k" + a: b, "j" + b: a}, P: &b, Ty: kind(a)}
		r := rec{A: b, In: in, Ls: []inner{in, in}}
		data, err := EncodeTOML(r)
		if err != nil {
			t.Fatal(err)
		}
		if !utf8.Valid(data) {
			t.Fatalf("encoded record is not UTF-8:\n%s", data)
		}
		var got rec
		if _, err := DecodeTOML(data, &got); err != nil {
			t.Fatalf("decode: %v\n%s", err, data)
		}
		if got.A != r.A || got.In.S != a || got.In.L[0] != a || got.In.L[1] != b || got.In.M["k"+a] != b || got.In.M["j"+b] != a || *got.In.P != b || got.In.Ty != kind(a) || len(got.Ls) != 2 || got.Ls[1].S != a {
			t.Fatalf("round trip changed the record: %#v, want %#v", got, r)
		}
		if r.In.S != a || *r.In.P != b {
			t.Fatal("EncodeTOML changed its argument")
		}
	})
}

type kind string
