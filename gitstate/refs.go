package gitstate

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// readRef reads a fully qualified ref (refs/heads/x, refs/remotes/r/x) from
// the repository's files, without a git process: the loose ref file if
// there is one (git replaces it by rename, so a read is never torn), else
// the packed-refs entry. ok is false when the ref does not exist; symbolic
// refs and anything unexpected are left to git (an error).
func (r *Repo) readRef(name string) (id string, ok bool, err error) {
	if !strings.HasPrefix(name, "refs/") || strings.Contains(name, "..") {
		return "", false, fmt.Errorf("ref %q: not a plain ref", name)
	}
	b, err := os.ReadFile(filepath.Join(r.CommonDir, filepath.FromSlash(name)))
	switch {
	case err == nil:
		s := strings.TrimSpace(string(b))
		if !isHexID(s) {
			return "", false, fmt.Errorf("ref %s: %q is not an object id", name, s)
		}
		return s, true, nil
	case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) && !errors.Is(err, syscall.EISDIR):
		// EISDIR: refs/heads/a asked while refs/heads/a/b exists.
		return "", false, err
	}
	f, err := os.Open(filepath.Join(r.CommonDir, "packed-refs"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 42 || line[0] == '#' || line[0] == '^' {
			continue
		}
		if line[41:] == name && isHexID(line[:40]) {
			return line[:40], true, nil
		}
	}
	return "", false, sc.Err()
}

func isHexID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
