package refstore

import (
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// A record version is three tiny objects (blob, tree, commit). Writing them
// with git costs three processes per write (hash-object, mktree,
// commit-tree); in a SHA-1 repository they are written here instead, as
// loose objects in git's own format (zlib of "<type> <size>\0<body>", named
// by the SHA-1 of that), created exclusively via a temporary file and a
// hard link as git does, and synced before they are named by any ref. A
// repository of another object format goes through git.

// objectFormat returns the repository's object format ("sha1", "sha256").
func (s *Store) objectFormat(ctx context.Context) string {
	s.formatOnce.Do(func() {
		// A repository whose config never names an object format is
		// SHA-1 (git writes extensions.objectFormat for any other); known
		// without a process. Anything that names one asks git.
		if cfg, err := os.ReadFile(filepath.Join(s.gitDir, "config")); err == nil &&
			!strings.Contains(strings.ToLower(string(cfg)), "objectformat") {
			s.format = "sha1"
			return
		}
		out, err := s.git(ctx, "rev-parse", "--show-object-format")
		s.format = strings.TrimSpace(out)
		if err != nil || s.format == "" {
			s.format = "unknown"
		}
	})
	return s.format
}

// writeObject writes one loose object and returns its id.
func (s *Store) writeObject(typ string, body []byte) (string, error) {
	header := fmt.Sprintf("%s %d\x00", typ, len(body))
	sum := sha1.New()
	sum.Write([]byte(header))
	sum.Write(body)
	id := hex.EncodeToString(sum.Sum(nil))
	dir := filepath.Join(s.gitDir, "objects", id[:2])
	path := filepath.Join(dir, id[2:])
	if _, err := os.Lstat(path); err == nil {
		return id, nil // objects are immutable: the same id is the same bytes
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write([]byte(header))
	zw.Write(body)
	if err := zw.Close(); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "tmp_obj_")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(z.Bytes())
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o444)
	}
	if err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return id, nil
}

// prepareLoose is Prepare for a SHA-1 repository without a git process.
func (s *Store) prepareLoose(msg string, data []byte, parent string, unix int64) (string, error) {
	blob, err := s.writeObject("blob", data)
	if err != nil {
		return "", err
	}
	raw, _ := hex.DecodeString(blob)
	tree, err := s.writeObject("tree", append([]byte("100644 "+FileName+"\x00"), raw...))
	if err != nil {
		return "", err
	}
	var c strings.Builder
	fmt.Fprintf(&c, "tree %s\n", tree)
	if parent != "" {
		fmt.Fprintf(&c, "parent %s\n", parent)
	}
	fmt.Fprintf(&c, "author orch-hooks <orch-hooks@localhost> %d +0000\n", unix)
	fmt.Fprintf(&c, "committer orch-hooks <orch-hooks@localhost> %d +0000\n", unix)
	fmt.Fprintf(&c, "\n%s", msg)
	return s.writeObject("commit", []byte(c.String()))
}
