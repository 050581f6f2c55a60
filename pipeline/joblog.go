package pipeline

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/config"
)

// logCapInterval is how often the monitor looks at its job's log size.
const logCapInterval = 200 * time.Millisecond

// logKeepOnFull is what of a log is kept when a record could not be
// written for want of space: the records come before the output.
const logKeepOnFull = 64 << 10

// logCap keeps a job's log at about max bytes of disk while its command
// writes the file directly (O_APPEND): the monitor is never in the
// command's data path, so a monitor that dies (SIGKILL) costs the command
// nothing — its writes go on; only the cap stops (a known limit).
//
// Past max, a hole is punched (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE) between
// the first max/2 bytes and the last max/2 bytes, both rounded down to the
// file system's block size: the disk usage stays about max while the
// apparent size keeps growing, and concurrent appends are unaffected. The
// hole is the cut; nothing else is recorded. Readers (LogReader) print a
// line naming the bytes cut in its place.
type logCap struct {
	f    *os.File
	max  int64
	note func(format string, args ...any)

	mu      sync.Mutex
	punched int64 // the hole ends here: below it nothing is punched again
	off     bool  // punching is not supported here: the cap has stopped

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// startLogCap starts capping f at max bytes (a max config.Load would
// refuse, e.g. 0 from a Config it did not make, is the default). note
// writes one line of the monitor's own into the log.
func startLogCap(f *os.File, max int, note func(string, ...any)) *logCap {
	if max < config.LogMaxBytesMin {
		max = config.LogMaxBytesDefault
	}
	c := &logCap{f: f, max: int64(max), note: note,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

func (c *logCap) loop() {
	defer close(c.done)
	t := time.NewTicker(logCapInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.kick:
		}
		c.Enforce()
	}
}

// Stop ends the capping goroutine; the file stays open.
func (c *logCap) Stop() {
	close(c.stop)
	<-c.done
}

// Enforce punches what is past the cap now, synchronously (the command
// may have written its whole output between two ticks).
func (c *logCap) Enforce() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var st unix.Stat_t
	if c.off || unix.Fstat(int(c.f.Fd()), &st) != nil || st.Size <= c.max {
		return
	}
	blk := int64(st.Blksize)
	if blk <= 0 {
		blk = 4096
	}
	from := max(c.max/2/blk*blk, c.punched)
	to := (st.Size - c.max/2) / blk * blk
	c.punch(from, to)
}

// Shed punches all of the log past its first 64 KiB: a record could not be
// written for want of space, and the space the log took is the records'.
// It reports the bytes it punched.
func (c *logCap) Shed() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var st unix.Stat_t
	if c.off || unix.Fstat(int(c.f.Fd()), &st) != nil {
		return 0
	}
	blk := max(int64(st.Blksize), 1)
	from := logKeepOnFull / blk * blk
	before := st.Blocks
	// Up to the next block boundary past the end: a partial last block
	// would be zeroed but kept.
	to := (st.Size + blk - 1) / blk * blk
	c.punch(from, to)
	if unix.Fstat(int(c.f.Fd()), &st) != nil {
		return 0
	}
	return (before - st.Blocks) * 512
}

// punch makes [from, to) a hole; mu is held. Without hole punching the cap
// stops, saying so once in the log: never the job's failure.
func (c *logCap) punch(from, to int64) {
	if to <= from {
		return
	}
	err := punchHole(c.f, from, to-from)
	switch {
	case err == nil:
		c.punched = max(c.punched, to)
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL):
		c.off = true
		c.note("the log is not capped: this file system cannot punch holes (fallocate: %v); it grows with the output", err)
	default:
		// EINTR, EIO: the next tick tries again.
	}
}

// LogReader reads a job's log from an offset, printing in place of each
// hole its monitor punched (the cut of the log's size cap) one line
// "… N bytes cut (log capped at M bytes) …" (without M when capBytes is 0).
// It reads with ReadAt, so a follower can read again after io.EOF and get
// what was appended since. Pos is the file offset read up to.
type LogReader struct {
	f        *os.File
	Pos      int64
	capBytes int64
	pending  []byte
	noSeek   bool // SEEK_DATA is refused: read the file as it is
}

// NewLogReader reads f from offset from; capBytes names the cap in the
// cut line.
func NewLogReader(f *os.File, from int64, capBytes int64) *LogReader {
	return &LogReader{f: f, Pos: from, capBytes: capBytes}
}

func (r *LogReader) cut(n int64) {
	if r.capBytes > 0 {
		r.pending = fmt.Appendf(r.pending, "\n… %d bytes cut (log capped at %d bytes) …\n", n, r.capBytes)
	} else {
		r.pending = fmt.Appendf(r.pending, "\n… %d bytes cut (log capped) …\n", n)
	}
}

func (r *LogReader) Read(p []byte) (int, error) {
	if len(r.pending) == 0 && !r.noSeek {
		fd := int(r.f.Fd())
		data, err := unix.Seek(fd, r.Pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			// No data past Pos: a hole to the end, or the end itself.
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				return 0, err
			}
			if st.Size <= r.Pos {
				return 0, io.EOF
			}
			r.cut(st.Size - r.Pos)
			r.Pos = st.Size
		case err != nil:
			r.noSeek = true
		case data > r.Pos:
			r.cut(data - r.Pos)
			r.Pos = data
		}
	}
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	if !r.noSeek {
		if hole, err := unix.Seek(int(r.f.Fd()), r.Pos, unix.SEEK_HOLE); err == nil && hole > r.Pos && hole-r.Pos < int64(len(p)) {
			p = p[:hole-r.Pos]
		}
	}
	n, err := r.f.ReadAt(p, r.Pos)
	r.Pos += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// isNoSpace reports whether err is a write that failed for want of space.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// noSpaceBackoff is the wait before the n-th retry (from 0) of a record
// write that failed for want of space.
func noSpaceBackoff(n int) time.Duration {
	d := 100 * time.Millisecond << min(n, 5)
	return min(d, 2*time.Second)
}
