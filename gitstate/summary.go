package gitstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// A running job's marker (running/<id>) holds a summary of its record: what
// a reaper pass needs to leave the job alone — the process identities, the
// exit code, the progress stamps and the start — in a small fixed text
// format that costs a few microseconds to read, where decoding the TOML
// record costs tens. A pass at 1,000 running jobs reads 1,000 of them.
//
// The summary is a cache, never a source of truth. It names the record it
// was made from by that file's identity and change stamps (device, inode,
// size, mtime, ctime: every write of a record renames a new file over it,
// so each write has a new inode and new stamps), and a reader uses it only
// while the record on disk is still that file. So a summary can be missing
// (a crash between the record write and the marker write, a marker write
// that failed), stale, torn, empty (a state dir of an older version) or of
// another format, and the reader only loses time: it reads the record. No
// fsync either: a summary lost to a power cut is a stale one.
//
// It is written under the job's lock, after every write of the record of a
// running job (Update), so the claim queued → running and every identity
// or progress stamp leave a fresh one behind them.

// summaryHeader starts every summary; the number is the format's version. A
// marker that does not start with it (empty: an older version; another
// number: a newer one) is not read.
const summaryHeader = "orch-hooks running summary 1\n"

// summaryMax bounds what a reader reads of a marker: a summary is a few
// hundred bytes (two host names and boot ids per identity at most).
const summaryMax = 4096

// recordStamp names one file written at one record path: a record rewritten
// since (a new file renamed over it) has another inode and change time.
type recordStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns since the epoch
}

func stampOf(st *unix.Stat_t) recordStamp {
	return recordStamp{dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// statRecord stamps the record at path, without following a symlink (a
// record is a regular file; anything else is left to the full read, which
// refuses it).
func statRecord(path string) (recordStamp, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return recordStamp{}, false
	}
	return stampOf(&st), true
}

// SummaryFields are the fields of Job a running marker's summary carries;
// a job read from one (RunningJob.Summarised) has these and ID, Status
// (running) and nothing else. A reaper pass judges a job from them alone;
// a field it comes to need must be added here, to the summary format (and
// its version) and to encodeSummary/decodeSummary.
var SummaryFields = []string{"ID", "Status", "CreatedAt", "StartedAt", "StartedBoot", "FinishedAt",
	"ProgressAt", "ProgressBoot", "FinalizeStep", "Monitor", "Command", "PGID", "Finalizer", "ExitCode"}

// encodeSummary writes the summary of running job j, whose record on disk
// is the file stamped rs.
//
//	orch-hooks running summary 1
//	record <dev> <ino> <size> <mtime ns> <ctime ns>
//	created <time>
//	started <time> <boottime ns>
//	finished <time>
//	progress <time> <boottime ns> <finalize step>
//	exit <code or ->
//	pgid <pgid>
//	monitor <pid> <start time> <pid ns> <host, quoted> <boot id, quoted>
//	command ...
//	finalizer ...
//	end <crc32 of everything before this line, hex>
//
// A time is "<unix seconds>.<nanoseconds>", or "-" for none. The last line
// makes a torn or cut summary (read while it is rewritten) unreadable
// rather than wrong.
func encodeSummary(j *Job, rs recordStamp) []byte {
	var b bytes.Buffer
	b.WriteString(summaryHeader)
	fmt.Fprintf(&b, "record %d %d %d %d %d\n", rs.dev, rs.ino, rs.size, rs.mtime, rs.ctime)
	fmt.Fprintf(&b, "created %s\n", summaryTime(j.CreatedAt))
	fmt.Fprintf(&b, "started %s %d\n", summaryTime(j.StartedAt), int64(j.StartedBoot))
	fmt.Fprintf(&b, "finished %s\n", summaryTime(j.FinishedAt))
	fmt.Fprintf(&b, "progress %s %d %d\n", summaryTime(j.ProgressAt), int64(j.ProgressBoot), j.FinalizeStep)
	if j.ExitCode != nil {
		fmt.Fprintf(&b, "exit %d\n", *j.ExitCode)
	} else {
		b.WriteString("exit -\n")
	}
	fmt.Fprintf(&b, "pgid %d\n", j.PGID)
	for _, p := range []struct {
		name string
		id   procid.Identity
	}{{"monitor", j.Monitor}, {"command", j.Command}, {"finalizer", j.Finalizer}} {
		fmt.Fprintf(&b, "%s %d %d %d %s %s\n", p.name, p.id.PID, p.id.StartTime, p.id.PidNS, strconv.Quote(p.id.Host), strconv.Quote(p.id.BootID))
	}
	fmt.Fprintf(&b, "end %08x\n", crc32.ChecksumIEEE(b.Bytes()))
	return b.Bytes()
}

func summaryTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return strconv.FormatInt(t.Unix(), 10) + "." + strconv.Itoa(t.Nanosecond())
}

var errSummary = errors.New("not a summary of this format")

// summaryReader reads a summary line by line, word by word.
type summaryReader struct {
	rest []byte // what follows the current line
	line []byte // the rest of the current line
	err  error
}

// next starts the line that must begin with key.
func (r *summaryReader) next(key string) {
	if r.err != nil {
		return
	}
	i := bytes.IndexByte(r.rest, '\n')
	if i < 0 {
		r.err = errSummary
		return
	}
	line := r.rest[:i]
	r.rest = r.rest[i+1:]
	w, after, ok := bytes.Cut(line, []byte{' '})
	if !ok || string(w) != key {
		r.err = errSummary
		return
	}
	r.line = after
}

func (r *summaryReader) word() []byte {
	if r.err != nil {
		return nil
	}
	w, after, _ := bytes.Cut(r.line, []byte{' '})
	if len(w) == 0 {
		r.err = errSummary
	}
	r.line = after
	return w
}

func (r *summaryReader) int() int64 {
	w := r.word()
	if r.err != nil {
		return 0
	}
	n, err := strconv.ParseInt(string(w), 10, 64)
	if err != nil {
		r.err = errSummary
	}
	return n
}

func (r *summaryReader) uint() uint64 {
	w := r.word()
	if r.err != nil {
		return 0
	}
	n, err := strconv.ParseUint(string(w), 10, 64)
	if err != nil {
		r.err = errSummary
	}
	return n
}

func (r *summaryReader) time() time.Time {
	w := r.word()
	if r.err != nil || string(w) == "-" {
		return time.Time{}
	}
	sec, nsec, ok := bytes.Cut(w, []byte{'.'})
	s, err1 := strconv.ParseInt(string(sec), 10, 64)
	ns, err2 := strconv.ParseInt(string(nsec), 10, 64)
	if !ok || err1 != nil || err2 != nil || ns < 0 || ns >= 1e9 {
		r.err = errSummary
		return time.Time{}
	}
	return time.Unix(s, ns).UTC()
}

func (r *summaryReader) quoted() string {
	if r.err != nil {
		return ""
	}
	q, err := strconv.QuotedPrefix(string(r.line))
	if err != nil {
		r.err = errSummary
		return ""
	}
	s, _ := strconv.Unquote(q)
	r.line = bytes.TrimPrefix(r.line[len(q):], []byte{' '})
	return s
}

// end checks that the current line is used up.
func (r *summaryReader) end() {
	if r.err == nil && len(r.line) != 0 {
		r.err = errSummary
	}
}

// decodeSummary reads the summary of running job id: the job as far as the
// summary carries it (SummaryFields) and the stamp of the record it was
// made from. Anything but a whole summary of this format is errSummary.
func decodeSummary(id string, data []byte) (*Job, recordStamp, error) {
	body, ok := bytes.CutPrefix(data, []byte(summaryHeader))
	if !ok {
		return nil, recordStamp{}, errSummary
	}
	// The check line closes the summary and covers all before it.
	i := bytes.LastIndex(data, []byte("\nend "))
	if i < 0 || len(data) != i+len("\nend ")+8+1 || data[len(data)-1] != '\n' {
		return nil, recordStamp{}, errSummary
	}
	sum, err := strconv.ParseUint(string(data[i+len("\nend "):len(data)-1]), 16, 32)
	if err != nil || uint32(sum) != crc32.ChecksumIEEE(data[:i+1]) {
		return nil, recordStamp{}, errSummary
	}
	r := &summaryReader{rest: body}
	var rs recordStamp
	r.next("record")
	rs.dev, rs.ino, rs.size, rs.mtime, rs.ctime = r.uint(), r.uint(), r.int(), r.int(), r.int()
	r.end()
	j := &Job{ID: id, Status: Running}
	r.next("created")
	j.CreatedAt = r.time()
	r.end()
	r.next("started")
	j.StartedAt, j.StartedBoot = r.time(), time.Duration(r.int())
	r.end()
	r.next("finished")
	j.FinishedAt = r.time()
	r.end()
	r.next("progress")
	j.ProgressAt, j.ProgressBoot, j.FinalizeStep = r.time(), time.Duration(r.int()), int(r.int())
	r.end()
	r.next("exit")
	if string(r.line) == "-" {
		r.line = nil
	} else {
		code := int(r.int())
		j.ExitCode = &code
	}
	r.end()
	r.next("pgid")
	j.PGID = int(r.int())
	r.end()
	for _, p := range []struct {
		name string
		id   *procid.Identity
	}{{"monitor", &j.Monitor}, {"command", &j.Command}, {"finalizer", &j.Finalizer}} {
		r.next(p.name)
		p.id.PID, p.id.StartTime, p.id.PidNS = int(r.int()), r.uint(), r.uint()
		p.id.Host, p.id.BootID = r.quoted(), r.quoted()
		r.end()
	}
	r.next("end")
	if r.err != nil {
		return nil, recordStamp{}, r.err
	}
	return j, rs, nil
}

// writeSummary replaces job j's running marker with the summary of its
// record as it now stands on disk. The caller holds the job's lock and has
// just written the record. It is best effort: a summary that is not
// written leaves one that no longer matches the record (or none), which
// readers pass over for the record itself.
func (s *Store) writeSummary(j *Job) {
	rs, ok := statRecord(s.RecordPath(j.ID))
	if !ok {
		return
	}
	path := filepath.Join(s.dir, runningDir, j.ID)
	// In place: a reader that catches it half-written finds no end line.
	f, err := statefile.Open(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, statefile.Mode)
	if err != nil {
		return
	}
	f.Write(encodeSummary(j, rs))
	f.Close()
	crashpoint.Hit("store.summarised")
}

// Summarise rewrites running job id's marker with the summary of its
// record, under the job's lock: for tools that write records directly
// rather than through Update (bench/seed). A job that is not running is
// left alone.
func (s *Store) Summarise(ctx context.Context, id string) error {
	unlock, err := s.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	j, err := s.Get(id)
	if err != nil {
		return err
	}
	if j.Status == Running {
		s.writeSummary(j)
	}
	return nil
}

// RunningJob is one job of RunningSummarised.
type RunningJob struct {
	*Job
	// Summarised says that Job was read from the summary in the job's
	// running marker and holds only SummaryFields: the summary of the
	// record as it stands on disk, which was last written with status
	// running. Anything more needs Get.
	Summarised bool
}

// RunningSummarised lists the running jobs as Running does, for a reaper
// pass: each job from the summary in its running marker when that summary
// is of the record as it stands (Summarised), from the record otherwise.
// The cost of a summarised job is reading its marker and stamping its
// record (no decode), both relative to their directories (no path walk per
// job); a Store from OpenStore keeps the markers it found current open
// for the next listing (markerFiles), which reads each with one pread.
// Markers whose job has ended are removed on the way, unless ReadOnly, as
// Running removes them.
func (s *Store) RunningSummarised() ([]RunningJob, []*UnreadableError, error) {
	dir := filepath.Join(s.dir, runningDir)
	// O_DIRECTORY: anything planted there but a directory fails at once,
	// never blocks (a FIFO) nor lists something else.
	d, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil // a state dir made before running/ existed
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list running jobs: %w", err)
	}
	defer d.Close()
	ents, err := d.ReadDir(-1)
	if err != nil {
		return nil, nil, fmt.Errorf("list running jobs: %w", err)
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	// Without the jobs dir open, no summary can be checked against its
	// record: every job is read from its record, which says what is wrong.
	rd := summaryDirs{run: int(d.Fd()), jobs: -1}
	if jd, err := os.OpenFile(filepath.Join(s.dir, jobsDir), os.O_RDONLY|syscall.O_DIRECTORY, 0); err == nil {
		defer jd.Close()
		rd.jobs = int(jd.Fd())
	}
	m := s.markers
	if m != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
	}
	var (
		jobs       []RunningJob
		unreadable []*UnreadableError
		buf        = make([]byte, summaryMax+1)
		listed     = make(map[string]bool, len(ents))
	)
	for _, e := range ents {
		id := e.Name()
		if ValidateJobID(id) != nil {
			continue
		}
		if e.Type().IsRegular() && rd.jobs >= 0 {
			listed[id] = true
			if j, ok := rd.summarised(m, id, buf); ok {
				jobs = append(jobs, RunningJob{Job: j, Summarised: true})
				continue
			}
		}
		j, err := s.Get(id)
		var ue *UnreadableError
		switch {
		case errors.Is(err, ErrNotFound):
		case errors.As(err, &ue):
			unreadable = append(unreadable, ue)
		case err != nil:
			unreadable = append(unreadable, &UnreadableError{Path: s.RecordPath(id), Err: err})
		case j.Status.Terminal():
			if !s.ReadOnly {
				os.Remove(filepath.Join(dir, id))
			}
		case j.Status == Running:
			jobs = append(jobs, RunningJob{Job: j})
		}
	}
	if m != nil {
		// A marker no longer listed (its job ended, or it is no longer a
		// regular file) is closed: the cache holds the running jobs only.
		for id, fd := range m.fds {
			if !listed[id] {
				unix.Close(fd)
				delete(m.fds, id)
			}
		}
	}
	sortRunning(jobs)
	return jobs, unreadable, nil
}

func sortRunning(js []RunningJob) {
	sort.SliceStable(js, func(a, b int) bool { return jobBefore(js[a].Job, js[b].Job) })
}

// summaryDirs are the running and jobs dirs, open for one listing.
type summaryDirs struct{ run, jobs int }

// markerOpenFlags open a marker as every state file is opened for reading:
// no symlink followed, never waited on (a FIFO), no controlling terminal
// taken. The fstat that follows refuses anything but a regular file
// before a byte is read.
const markerOpenFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC

// summarised reads the summary in running job id's marker and returns the
// job it summarises when the record is still the file it was made from.
// The marker is read through the file m kept open from an earlier listing
// when there is one; a summary read there that is not current (the
// marker was rewritten as a new file, or the record since) sends it to
// the marker at its path, opened and checked as a regular file. A marker
// whose summary is current is kept open in m for the next listing.
func (rd summaryDirs) summarised(m *markerFiles, id string, buf []byte) (*Job, bool) {
	if m != nil {
		if fd, ok := m.fds[id]; ok {
			if j, ok := rd.summaryAt(fd, id, buf); ok {
				return j, true
			}
			unix.Close(fd)
			delete(m.fds, id)
		}
	}
	fd, err := unix.Openat(rd.run, id, markerOpenFlags, 0)
	if err != nil {
		return nil, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, false
	}
	j, ok := rd.summaryAt(fd, id, buf)
	if ok && m.keep(id, fd) {
		return j, true
	}
	unix.Close(fd)
	return j, ok
}

// summaryAt reads the summary in the marker open at fd, a regular file, in
// one pread into buf (which a summary must fit with a byte to spare), and
// returns the job when the record is the file the summary names. A read
// cut short, of a marker rewritten meanwhile or too large, yields a
// summary that does not check, never a wrong one: the end line covers the
// whole summary.
func (rd summaryDirs) summaryAt(fd int, id string, buf []byte) (*Job, bool) {
	n, err := unix.Pread(fd, buf, 0)
	for err == unix.EINTR {
		n, err = unix.Pread(fd, buf, 0)
	}
	if err != nil || n <= 0 || n >= len(buf) {
		return nil, false
	}
	j, rs, err := decodeSummary(id, buf[:n])
	if err != nil {
		return nil, false
	}
	var st unix.Stat_t
	if err := unix.Fstatat(rd.jobs, id+recordExt, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
		st.Mode&unix.S_IFMT != unix.S_IFREG || stampOf(&st) != rs {
		return nil, false
	}
	return j, true
}

// markerFiles are the running markers a Store keeps open between listings:
// those whose summary was current when last read. A marker is rewritten in
// place (writeSummary truncates it), so the open file shows each new
// summary; one replaced by a new file shows the old summary, which no
// longer names the record once the record is written again, and is then
// read at its path (summarised). Whatever file is read, a summary is used
// only while the record on disk is the file it names, so a kept file
// never makes a listing trust what the record does not say.
type markerFiles struct {
	mu  sync.Mutex // held through a listing
	fds map[string]int
	max int
}

// newMarkerFiles is the cache of store s, whose files are closed when s is
// garbage collected. It keeps at most an eighth of the process's open-file
// limit (at most 4,096): the markers must never starve the process of
// descriptors for its real work.
func newMarkerFiles(s *Store) *markerFiles {
	m := &markerFiles{fds: map[string]int{}, max: 4096}
	var lim unix.Rlimit
	// Rlimit.Cur is a uint64 on Linux and darwin, an int64 on FreeBSD.
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && uint64(lim.Cur)/8 < uint64(m.max) {
		m.max = int(uint64(lim.Cur) / 8)
	}
	runtime.AddCleanup(s, (*markerFiles).closeAll, m)
	return m
}

// CloseMarkers closes the running markers the store keeps open between
// listings (RunningSummarised); the next listing opens them again. For a
// caller done with the store before it is garbage collected, or measuring
// a first listing.
func (s *Store) CloseMarkers() {
	if s.markers != nil {
		s.markers.closeAll()
	}
}

func (m *markerFiles) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, fd := range m.fds {
		unix.Close(fd)
		delete(m.fds, id)
	}
}

// keep keeps fd open as id's marker, unless the cache is full (or absent).
func (m *markerFiles) keep(id string, fd int) bool {
	if m == nil || len(m.fds) >= m.max {
		return false
	}
	m.fds[id] = fd
	return true
}
