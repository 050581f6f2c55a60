package statefile

import (
	"bytes"
	"encoding"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// Any bytes round-trip (DESIGN.md "State on disk"). Text reaches a record
// from outside: file names git allows to be any bytes, a Latin-1 user.name,
// a lease holder typed by a user, a gate's binary output, a repository path.
// TOML strings must be UTF-8, and its reader refuses a file that is not,
// while its writer stores whatever bytes it is given: a record holding such
// text was written fine and could never be read again. So every string of a
// record goes through EscapeText on its way to disk and UnescapeText on its
// way back, which restores the original bytes exactly:
//
//   - valid UTF-8 that does not begin with TextEscapePrefix is stored as it
//     is, so every ordinary record reads the same as before;
//   - anything else is stored as TextEscapePrefix followed by the text with
//     each backslash doubled and each byte that is not part of valid UTF-8
//     written \xHH (two lowercase hex digits).
//
// No field is stored lossily: paths and the merge author must reproduce the
// same bytes (the same merge commit), and keeping display text exact too
// costs nothing. Printing it for a person is the printing side's concern.
const TextEscapePrefix = "~bytes:"

// EscapeText returns s in the form a record stores (see TextEscapePrefix):
// always valid UTF-8, and UnescapeText(EscapeText(s)) == s.
func EscapeText(s string) string {
	if utf8.ValidString(s) && !strings.HasPrefix(s, TextEscapePrefix) {
		return s
	}
	var b strings.Builder
	b.Grow(len(TextEscapePrefix) + len(s) + len(s)/2)
	b.WriteString(TextEscapePrefix)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			const hex = "0123456789abcdef"
			b.WriteString(`\x`)
			b.WriteByte(hex[s[i]>>4])
			b.WriteByte(hex[s[i]&0xf])
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// EscapedLen is len(EscapeText(s)) without building it.
func EscapedLen(s string) int {
	if utf8.ValidString(s) && !strings.HasPrefix(s, TextEscapePrefix) {
		return len(s)
	}
	n := len(TextEscapePrefix)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			n += 4
		case r == '\\':
			n += 2
		default:
			n += size
		}
		i += size
	}
	return n
}

// UnescapeText reverses EscapeText. Text without the prefix is returned as
// it is; an escape it does not know (a record edited by hand) is kept
// literally rather than making the record unreadable.
func UnescapeText(s string) string {
	if !strings.HasPrefix(s, TextEscapePrefix) {
		return s
	}
	s = s[len(TextEscapePrefix):]
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch {
		case s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case s[i+1] == 'x' && i+3 < len(s) && isHex(s[i+2]) && isHex(s[i+3]):
			b.WriteByte(unhex(s[i+2])<<4 | unhex(s[i+3]))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// EncodeTOML encodes v (a struct or a pointer to one) as TOML with every
// string in it, at any depth (fields, slices, map keys and values, named
// string types), passed through EscapeText. v itself is not changed.
func EncodeTOML(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(mapStrings(reflect.ValueOf(v), EscapeText).Interface()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DecodeTOML decodes data into v (a pointer) and passes every string in it
// through UnescapeText: the inverse of EncodeTOML.
func DecodeTOML(data []byte, v any) (toml.MetaData, error) {
	md, err := toml.Decode(string(data), v)
	if err != nil {
		return md, err
	}
	UnescapeStrings(v)
	return md, nil
}

// EscapeStrings returns a deep copy of v (a struct, or a pointer to one)
// with every string escaped (EscapeText): for a record encoded by other
// means than TOML (the JSON event log).
func EscapeStrings[T any](v T) T {
	return mapStrings(reflect.ValueOf(v), EscapeText).Interface().(T)
}

// UnescapeStrings unescapes (UnescapeText) every string in *v in place; v
// must be a pointer.
func UnescapeStrings(v any) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return
	}
	rv.Elem().Set(mapStrings(rv.Elem(), UnescapeText))
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// mapStrings returns a copy of v in which every string reachable through
// exported fields, slices, arrays, maps and pointers is replaced by f of
// it. Values whose type marshals itself as text (time.Time) are copied as
// they are.
func mapStrings(v reflect.Value, f func(string) string) reflect.Value {
	if !v.IsValid() {
		return v
	}
	t := v.Type()
	if t.Kind() != reflect.String && t.Kind() != reflect.Pointer && t.Implements(textMarshaler) {
		return v
	}
	switch t.Kind() {
	case reflect.String:
		out := reflect.New(t).Elem()
		out.SetString(f(v.String()))
		return out
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		out := reflect.New(t.Elem())
		out.Elem().Set(mapStrings(v.Elem(), f))
		return out
	case reflect.Struct:
		out := reflect.New(t).Elem()
		out.Set(v)
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).IsExported() {
				out.Field(i).Set(mapStrings(v.Field(i), f))
			}
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeSlice(t, v.Len(), v.Len())
		for i := 0; i < v.Len(); i++ {
			out.Index(i).Set(mapStrings(v.Index(i), f))
		}
		return out
	case reflect.Array:
		out := reflect.New(t).Elem()
		for i := 0; i < v.Len(); i++ {
			out.Index(i).Set(mapStrings(v.Index(i), f))
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeMapWithSize(t, v.Len())
		it := v.MapRange()
		for it.Next() {
			out.SetMapIndex(mapStrings(it.Key(), f), mapStrings(it.Value(), f))
		}
		return out
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		out := reflect.New(t).Elem()
		out.Set(mapStrings(v.Elem(), f))
		return out
	}
	return v
}

// MapStrings returns a deep copy of v with every string in it (as
// EncodeTOML reaches them) replaced by f of it: how a test puts chosen bytes
// into every field of a record.
func MapStrings[T any](v T, f func(string) string) T {
	return mapStrings(reflect.ValueOf(v), f).Interface().(T)
}
