// Package statefile holds the two primitives every piece of orch-hooks state
// is built on: records replaced atomically, and advisory locks held on
// separate, permanent lock files.
//
// A reader of a record never sees a torn write: Replace and Create write a
// temporary file in the record's directory, fsync it, move it into place
// with rename (or link, for an exclusive create) and fsync the directory, so
// a crash at any instant leaves either the old record or the new one.
//
// Lock files are never deleted or renamed: locking a file that is later
// renamed over would lock a dead inode and exclude nobody.
package statefile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// TempPrefix starts the name of every temporary file this package writes, so
// listings can skip them and gc can find the ones a crash left behind.
const TempPrefix = ".tmp-"

// Mode is the permission of every record: readable by the group and others,
// never writable by them.
const Mode fs.FileMode = 0o644

// Replace atomically replaces (or creates) the file at path with data.
func Replace(path string, data []byte) error { return ReplaceMode(path, data, Mode) }

// ReplaceMode is Replace with the file's permission bits: the file has them
// from the instant it appears under its name.
func ReplaceMode(path string, data []byte, mode fs.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace %s: %w%s%s", path, err, fullHint(err, filepath.Dir(path)), PermissionHint(err, filepath.Dir(path)))
	}
	return SyncDir(filepath.Dir(path))
}

// Create atomically creates the file at path with data, only if no file
// exists there. It reports created=false, and changes nothing, when one does.
// Because the content is complete before the name appears, a concurrent
// reader sees either no file or the whole record.
func Create(path string, data []byte) (created bool, err error) {
	tmp, err := writeTemp(path, data, Mode)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("create %s: %w%s%s", path, err, fullHint(err, filepath.Dir(path)), PermissionHint(err, filepath.Dir(path)))
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return true, err
	}
	return true, nil
}

func writeTemp(path string, data []byte, mode fs.FileMode) (string, error) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("temp name for %s: %w", path, err)
	}
	dir, base := filepath.Split(path)
	tmp := filepath.Join(dir, TempPrefix+base+"-"+hex.EncodeToString(rnd[:]))
	// Open: O_EXCL|O_NOFOLLOW, so nothing planted at the temporary name
	// is written through, and the mode is set exactly.
	f, err := Open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return "", fmt.Errorf("write %s: %w%s%s", path, err, fullHint(err, dir), PermissionHint(err, dir))
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w%s", path, err, fullHint(err, dir))
	}
	return tmp, nil
}

// fullHint is what to do when a write failed for want of space: the old
// record is intact (the temporary file is removed), so freeing space and
// running the command again is all it takes.
func fullHint(err error, dir string) string {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Sprintf("; nothing was changed: free space on the file system of %s and run the command again", filepath.Clean(dir))
	}
	return ""
}

// SyncDir fsyncs a directory so that renames and links into it are durable.
// O_DIRECTORY|O_NONBLOCK: whatever sits at dir, the open never waits.
func SyncDir(dir string) error {
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// IsTemp reports whether a directory entry name is a temporary file of this
// package (a write in progress, or one a crash abandoned).
func IsTemp(name string) bool { return strings.HasPrefix(name, TempPrefix) }
