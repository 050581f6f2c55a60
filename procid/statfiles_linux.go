package procid

import (
	"errors"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// StatFiles checks identities as Check does, for a caller that checks the
// same processes again and again (a reaper pass every interval over every
// running job): it keeps the /proc/<pid>/stat file of each process it found
// alive open, and checks it next time with one pread instead of an open, a
// read and a close, which the kernel makes far dearer for /proc than for a
// plain file (a pid lookup and a new inode per open).
//
// An open /proc/<pid>/stat stays bound to the process it was opened for,
// not to the number: once that process is reaped, a read fails with ESRCH,
// whatever process holds the pid now. A file is kept only after its first
// read showed the identity's start time, so a kept file can only ever show
// that process (alive, a zombie: Dead) or fail (Dead); the start time is
// compared on every read all the same.
//
// The zero value is ready to use; it is safe for concurrent use. Sweep
// closes the files of processes no longer asked about.
type StatFiles struct {
	mu    sync.Mutex
	proc  int // /proc, open (0: not yet; -1: could not be opened)
	files map[Identity]*statFile
	gen   uint64
	max   int
	buf   []byte
}

type statFile struct {
	fd   int
	used uint64 // the generation of its last check
}

// statFilesMax bounds the files kept: at most an eighth of the process's
// open-file limit, at most 4,096, so that they never starve the process of
// descriptors for its real work. Checks beyond it open and close.
func statFilesMax() int {
	n := 4096
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur/8 < uint64(n) {
		n = int(lim.Cur / 8)
	}
	return n
}

// Check is Check, through the kept files.
func (c *StatFiles) Check(id Identity) (Liveness, error) {
	if ok, err := Judgeable(id); !ok {
		return Unknown, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.files == nil {
		c.files, c.max, c.buf = map[Identity]*statFile{}, statFilesMax(), make([]byte, 1024)
		c.proc = -1
		if fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			c.proc = fd
		}
	}
	if f, ok := c.files[id]; ok {
		st, err := c.read(f.fd)
		if err == nil && judgeStat(id, st) == Alive {
			f.used = c.gen
			return Alive, nil
		}
		unix.Close(f.fd)
		delete(c.files, id)
		if err == nil || errors.Is(err, ErrNoProcess) {
			return Dead, nil
		}
		// Any other failure: asked again of a new file below.
	}
	if c.proc < 0 {
		return Check(id)
	}
	fd, err := unix.Openat(c.proc, strconv.Itoa(id.PID)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for err == unix.EINTR {
		fd, err = unix.Openat(c.proc, strconv.Itoa(id.PID)+"/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err == unix.ENOENT || err == unix.ESRCH {
		return Dead, nil
	}
	if err != nil {
		return Unknown, &statError{pid: id.PID, err: err}
	}
	st, err := c.read(fd)
	if errors.Is(err, ErrNoProcess) {
		unix.Close(fd)
		return Dead, nil
	}
	if err != nil {
		unix.Close(fd)
		return Unknown, err
	}
	l := judgeStat(id, st)
	if l == Alive && len(c.files) < c.max {
		c.files[id] = &statFile{fd: fd, used: c.gen}
	} else {
		unix.Close(fd)
	}
	return l, nil
}

// Sweep closes the files of the processes not checked since the last
// Sweep: a reaper pass sweeps after each pass, so the files kept are those
// of the jobs still running.
func (c *StatFiles) Sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, f := range c.files {
		if f.used != c.gen {
			unix.Close(f.fd)
			delete(c.files, id)
		}
	}
	c.gen++
}

// read reads the stat line of the open /proc/<pid>/stat fd afresh (a read
// at offset 0 makes /proc generate it again) into c.buf, and parses it as
// ReadStat does.
func (c *StatFiles) read(fd int) (Stat, error) {
	n, err := unix.Pread(fd, c.buf, 0)
	for err == unix.EINTR {
		n, err = unix.Pread(fd, c.buf, 0)
	}
	if err == unix.ESRCH {
		return Stat{}, ErrNoProcess
	}
	if err != nil {
		return Stat{}, err
	}
	b := c.buf[:n]
	if n == len(c.buf) {
		// Longer than a stat line ever is in practice: read it whole.
		b, err = preadAll(fd, c.buf)
		if err != nil {
			return Stat{}, err
		}
	}
	st, err := parseStat(b)
	if err != nil {
		return st, err
	}
	off, err := bootOffset()
	if err != nil {
		return Stat{}, err
	}
	st.StartTime = uint64(int64(st.StartTime) - off)
	return st, nil
}

// preadAll reads fd from offset 0 to its end, starting from what fits buf.
func preadAll(fd int, buf []byte) ([]byte, error) {
	b := make([]byte, 0, 2*len(buf))
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Pread(fd, b[len(b):cap(b)], int64(len(b)))
		if err == unix.EINTR {
			continue
		}
		if err == unix.ESRCH {
			return nil, ErrNoProcess
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

// judgeStat is Check's verdict on a stat line read for id.
func judgeStat(id Identity, st Stat) Liveness {
	if st.StartTime != id.StartTime || st.State == 'Z' || st.State == 'X' {
		return Dead
	}
	return Alive
}

type statError struct {
	pid int
	err error
}

func (e *statError) Error() string {
	return "pid " + strconv.Itoa(e.pid) + ": open /proc stat: " + e.err.Error()
}
func (e *statError) Unwrap() error { return e.err }
