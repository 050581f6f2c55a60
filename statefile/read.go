package statefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxSizeDefault caps every state file orch-hooks reads whole: a job record,
// a lease record, the reaper's state and orch.toml. The largest record it
// writes is a job with its history and gate results, a few KiB (free text in
// a record is clamped when written); orch.toml files are a few KiB too. 1 MiB
// is hundreds of times that, yet reading and decoding a file that large takes
// milliseconds, where a 20 MiB one took seconds of a listing or reaper pass.
const MaxSizeDefault = 1 << 20

// ErrTooLarge is returned (wrapped, in an *fs.PathError naming the file) by
// ReadFile for a file larger than its cap.
var ErrTooLarge = errors.New("file too large")

// ReadFile reads the whole file at path, like os.ReadFile, but refuses a file
// larger than max bytes without reading it: the error wraps ErrTooLarge and
// names the path, the size, the cap and the fix. A missing file wraps
// fs.ErrNotExist as with os.ReadFile. The size is taken from the open file
// (fstat), and at most max+1 bytes are ever read, so a file that grows
// between the two, or one with no size (a pipe), is refused as well. It
// opens with Open: a symlink, FIFO, socket or directory at path is refused
// (ErrNotRegular), never followed or waited on.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := Open(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return readOpen(f, path, max)
}

// ReadFileFollow is ReadFile for a file outside the state dir that a user
// may well keep as a symlink (orch.toml): it follows symlinks, but still
// never blocks in open and refuses a target that is not a regular file.
func ReadFileFollow(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		f.Close()
		return nil, NotRegular(path, fi.Mode())
	}
	return readOpen(f, path, max)
}

func readOpen(f *os.File, path string, max int64) ([]byte, error) {
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().IsRegular() && fi.Size() > max {
		return nil, tooLarge(path, fmt.Sprintf("%d bytes", fi.Size()), max)
	}
	var buf []byte
	if fi.Mode().IsRegular() {
		buf = make([]byte, 0, fi.Size()+1) // +1: see EOF without growing
	}
	buf, err = readAll(io.LimitReader(f, max+1), buf)
	if err != nil {
		return nil, err // already an *fs.PathError naming the file
	}
	if int64(len(buf)) > max {
		return nil, tooLarge(path, fmt.Sprintf("over %d bytes", max), max)
	}
	return buf, nil
}

func tooLarge(path, size string, max int64) error {
	return &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf(
		"%w: %s, over the %d-byte cap; remove or restore it (orch-hooks never writes, nor needs, a file this large)",
		ErrTooLarge, size, max)}
}

// readAll appends everything r yields to buf.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
