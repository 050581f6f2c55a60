package config

import (
	"fmt"
	"strconv"
	"strings"
)

// source locates keys in the text of a TOML file for error messages. The
// TOML decoder reports positions only for syntax errors, so unknown keys and
// bad values are found here by a line scan that follows table headers and
// array-of-table counts. It understands the shapes orch.toml uses (tables,
// [[stages]], plain and dotted keys); for anything else it returns 0 and the
// message still names the file and key.
type source struct {
	file string
	data []byte
}

// line returns the 1-based line of the key path (strings are keys, ints are
// indexes into an array of tables). A key that is not written (a required
// key left out) is located at its table's header; 0 means not found.
func (s source) line(path ...any) int {
	for n := len(path); n > 0; n-- {
		if l := s.exactLine(path[:n]...); l > 0 {
			return l
		}
	}
	return 0
}

func (s source) exactLine(path ...any) int {
	want := keyString(path)
	if len(s.data) == 0 || want == "" {
		return 0
	}
	table := ""
	counts := map[string]int{}
	for i, raw := range strings.Split(string(s.data), "\n") {
		l := strings.TrimSpace(stripComment(raw))
		switch {
		case l == "":
			continue
		case strings.HasPrefix(l, "[["):
			name := normKey(strings.TrimSuffix(strings.TrimPrefix(l, "[["), "]]"))
			table = fmt.Sprintf("%s.%d", name, counts[name])
			counts[name]++
			if table == want || name == want {
				return i + 1
			}
			continue
		case strings.HasPrefix(l, "["):
			table = normKey(strings.TrimSuffix(strings.TrimPrefix(l, "["), "]"))
			if table == want {
				return i + 1
			}
			continue
		}
		k, _, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		full := normKey(k)
		if table != "" {
			full = table + "." + full
		}
		// An unknown key inside [[stages]] is reported without its index.
		if full == want || stripIndexes(full) == want {
			return i + 1
		}
	}
	return 0
}

// defined reports whether stages[i].key is written in the file.
func (s source) defined(i int, key string) bool {
	return s.exactLine("stages", i, key) > 0
}

func keyString(path []any) string {
	var parts []string
	for _, p := range path {
		switch v := p.(type) {
		case string:
			parts = append(parts, v)
		case int:
			parts = append(parts, strconv.Itoa(v))
		}
	}
	return strings.Join(parts, ".")
}

func normKey(k string) string {
	var parts []string
	for _, p := range strings.Split(strings.TrimSpace(k), ".") {
		parts = append(parts, strings.Trim(strings.TrimSpace(p), `"'`))
	}
	return strings.Join(parts, ".")
}

func stripIndexes(k string) string {
	var parts []string
	for _, p := range strings.Split(k, ".") {
		if _, err := strconv.Atoi(p); err != nil {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ".")
}

// stripComment drops a trailing # comment outside quotes.
func stripComment(l string) string {
	var q byte
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case q != 0 && c == '\\' && q == '"':
			i++
		case q != 0 && c == q:
			q = 0
		case q == 0 && (c == '"' || c == '\''):
			q = c
		case q == 0 && c == '#':
			return l[:i]
		}
	}
	return l
}
