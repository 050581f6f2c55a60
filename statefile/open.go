package statefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// ErrNotRegular is returned (wrapped, in an *fs.PathError naming the file)
// by Open, ReadFile and the lock functions for a state path that is not a
// regular file: a symlink, a FIFO, a socket, a directory or a device.
// Nothing under the state dir is trusted to be what its name says, so such
// an entry is refused and reported — never followed, never waited on.
var ErrNotRegular = errors.New("not a regular file")

// Open opens a state file as os.OpenFile does, but never follows a symlink
// in the last element (O_NOFOLLOW) and never blocks in open(2) (O_NONBLOCK:
// a FIFO with no writer, or no reader, would otherwise hang the caller for
// good). Whatever is not a regular file is refused with an error wrapping
// ErrNotRegular that says what it is and the fix. On a regular file
// O_NONBLOCK changes nothing, so reads and writes behave as usual. A file
// created here gets perm as its permission bits exactly (the umask may not
// take any away: a caller asking for 0600 or 0660 means it).
func Open(path string, flag int, perm fs.FileMode) (*os.File, error) {
	flag |= syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	created := false
	var f *os.File
	var err error
	if flag&os.O_CREATE != 0 && flag&os.O_EXCL == 0 {
		// Create exclusively first, to know whether this call made the
		// file (and may set its mode) or found one.
		f, err = os.OpenFile(path, flag|os.O_EXCL, perm)
		if created = err == nil; errors.Is(err, fs.ErrExist) {
			f, err = os.OpenFile(path, flag&^os.O_CREATE, perm)
		}
	} else {
		f, err = os.OpenFile(path, flag, perm)
		created = err == nil && flag&os.O_EXCL != 0
	}
	if err != nil {
		return nil, openError(path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, NotRegular(path, fi.Mode())
	}
	if created && fi.Mode().Perm() != perm.Perm() {
		// The umask took bits away (or added none a caller wants): the
		// caller asked for exactly these.
		if err := f.Chmod(perm.Perm()); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// openError is the error for an open(2) of path with O_NOFOLLOW|O_NONBLOCK
// that failed with err. ELOOP: a symlink. ENXIO: a FIFO with no reader
// opened for writing, or a socket. EISDIR: a directory opened for writing.
// EEXIST from an exclusive create: a dangling symlink. Each is a thing that
// is not a regular file, and the error says which (NotRegular); any other
// err is returned as it is.
func openError(path string, err error) error {
	if fi, lerr := os.Lstat(path); lerr == nil && !fi.Mode().IsRegular() {
		return NotRegular(path, fi.Mode())
	}
	return err
}

// NotRegular is the error for a state path found to be of type mode: an
// *fs.PathError wrapping ErrNotRegular, naming what the entry is and the
// fix.
func NotRegular(path string, mode fs.FileMode) error {
	return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf(
		"%w: it is %s; orch-hooks never follows or waits on one here: remove it (rm %q) and run the command again",
		ErrNotRegular, Kind(mode), path)}
}

// Kind names the type of a file for a person: "a symlink", "a FIFO", ...
func Kind(mode fs.FileMode) string {
	switch t := mode.Type(); {
	case t&fs.ModeSymlink != 0:
		return "a symlink"
	case t&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t&fs.ModeDevice != 0:
		return "a device"
	case t == 0:
		return "a regular file"
	}
	return "not a regular file (" + mode.Type().String() + ")"
}

// CheckDir reports an error unless path is a directory itself — not a
// symlink to one, not anything else. It is for the subdirectories of the
// state dir: a symlink there would send every write through it to wherever
// it points. A missing directory wraps fs.ErrNotExist.
func CheckDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &fs.PathError{Op: "open", Path: path, Err: fmt.Errorf(
			"%w: it is %s where orch-hooks keeps a directory; it never follows or uses one: remove it (rm %q) and run orch-hooks init",
			ErrNotRegular, Kind(fi.Mode()), path)}
	}
	return nil
}

// PermissionHint is what to do when err is a permission error on path (or
// on an entry in the directory path): name the owner of what refused, the
// user this process runs as, and the fix. It is empty for any other error.
// The usual cause is a command once run as root (or as another user) in
// this repository, which left files this user cannot write.
func PermissionHint(err error, path string) string {
	if !errors.Is(err, fs.ErrPermission) {
		return ""
	}
	root := stateRoot(path)
	if fi, lerr := os.Lstat(path); lerr == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
			return fmt.Sprintf("; %s belongs to %s and this process runs as %s (a command once run as another user, such as root, leaves such files): "+
				"give the state dir back to the repository's owner (sudo chown -R %s %s) or run orch-hooks as that owner",
				path, UserName(int(st.Uid)), UserName(os.Geteuid()), loginName(os.Geteuid()), root)
		}
	}
	return fmt.Sprintf("; this process (%s) may not write there: make the state dir writable for the repository's owner (chmod -R u+w %s), or run orch-hooks as that owner",
		UserName(os.Geteuid()), root)
}

// stateRoot is the state dir that path lies in (<common-git-dir>/orch, the
// nearest ancestor called "orch"), or path's directory when none is near.
func stateRoot(path string) string {
	for d, i := path, 0; i < 3; d, i = filepath.Dir(d), i+1 {
		if filepath.Base(d) == "orch" {
			return d
		}
	}
	return filepath.Dir(path)
}

// UserName names a user for a message: "uid 1000 (alice)", or "uid 1000"
// when the account cannot be looked up.
func UserName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("uid %d (%s)", uid, u.Username)
	}
	return fmt.Sprintf("uid %d", uid)
}

func loginName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
