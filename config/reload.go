package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// Stamp names a file as it is on disk, as cheaply as one stat can: its
// identity (device, inode, so a file renamed over it counts as changed),
// size, and modification and status-change times. Equal stamps almost
// always mean equal content; Reloader covers the exception (two writes of
// the same size within one tick of the file system's clock).
type Stamp struct {
	Exists       bool
	Dev, Ino     uint64
	Size         int64
	MTime, CTime int64 // unix ns
}

// StatStamp stats path, following a symlink as Load does. A file that
// cannot be stat'ed has the zero Stamp.
func StatStamp(path string) Stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return Stamp{}
	}
	s := Stamp{Exists: true, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.Dev, s.Ino = uint64(st.Dev), st.Ino
		s.CTime = ctimeNano(st)
	}
	return s
}

// Change is what Reloader.Check found.
type Change int

const (
	// Unchanged: the file's content is what was last read.
	Unchanged Change = iota
	// Reloaded: the file changed and its new content is valid; Config
	// returns it.
	Reloaded
	// Rejected: the file changed and its new content is not valid (or it
	// is gone); Config still returns the last good configuration and Err
	// says why.
	Rejected
)

// racyWindow is how long after its modification a file's stamp is not
// trusted to tell its content: file system clocks are coarse (a kernel
// tick, up to 2 s on some), so two writes of the same size within one tick
// leave equal stamps. Within the window Check compares the content itself,
// as git does for a racily clean index entry.
const racyWindow = 2 * time.Second

// settleDelay: a file modified less than this long ago may be in the
// middle of being written by an editor that truncates and rewrites in
// place; Check looks again at its next call rather than report a half
// file as an error (or an empty one as the defaults).
const settleDelay = 50 * time.Millisecond

// Reloader keeps a long-running process's configuration (watch) in step
// with its file. Check is cheap when nothing changed (one stat), so it can
// run every second; Invalidate makes the next Check read the file whatever
// the stat says, for a caller told of a change by a file-system
// notification. A bad file never replaces a good configuration: Config
// keeps returning the last good one while Err says what is wrong with the
// file. Environment overrides are read at every reload, like Load.
//
// A Reloader is not safe for concurrent use.
type Reloader struct {
	path     string
	required bool

	stamp  Stamp
	readAt time.Time
	data   []byte // the content last read, nil when there was no file
	dirty  bool
	good   *Config
	goodAt time.Time
	err    error
	noFile bool // the last read found no file
	// goodEmpty: the last good configuration came from no file or an
	// empty one (nothing set).
	goodEmpty bool
	nowFunc   func() time.Time
}

// NewReloader loads path (required: it was named by the user, so a missing
// file is an error) and returns a Reloader holding it. The first load has
// no last good configuration to fall back to: its error is returned and
// the caller should fail as any command does on a bad file.
func NewReloader(path string, required bool) (*Reloader, error) {
	r := &Reloader{path: path, required: required, nowFunc: time.Now}
	// Stat before reading: a write in between leaves a stamp older than
	// the content, so the next Check reads again and finds it the same.
	r.stamp = StatStamp(path)
	r.readAt = r.nowFunc()
	c, data, err := load(path, required)
	if err != nil {
		return nil, err
	}
	r.data, r.noFile = data, c.Path == ""
	r.good, r.goodAt = c, r.readAt
	r.goodEmpty = isEmpty(data)
	return r, nil
}

// Path is the file the Reloader reads.
func (r *Reloader) Path() string { return r.path }

// Config is the last good configuration.
func (r *Reloader) Config() *Config { return r.good }

// LoadedAt is when Config was read.
func (r *Reloader) LoadedAt() time.Time { return r.goodAt }

// Err is the problem with the file as it is now, nil when Config is what
// the file says.
func (r *Reloader) Err() error { return r.err }

// Invalidate makes the next Check read the file even if its stamp has not
// changed (a change notification arrived).
func (r *Reloader) Invalidate() { r.dirty = true }

// Check looks at the file and reloads it if it changed since the last
// Check. It returns Reloaded or Rejected once per change of content (a
// file touched without a change, or rewritten with the same bytes, or
// broken again in the same way, is Unchanged), and the file's current
// problem, as Err does, whatever the Change.
func (r *Reloader) Check() (Change, error) {
	now := r.nowFunc()
	st := StatStamp(r.path)
	if st.Exists && now.Sub(time.Unix(0, st.MTime)) >= 0 && now.Sub(time.Unix(0, st.MTime)) < settleDelay {
		r.dirty = true // look again next time, once the writer is done
		return Unchanged, r.err
	}
	racy := st.Exists && r.readAt.Sub(time.Unix(0, st.MTime)) < racyWindow
	if st == r.stamp && !r.dirty && !racy {
		return Unchanged, r.err
	}
	data, readErr := statefile.ReadFileFollow(r.path, statefile.MaxSizeDefault)
	if after := StatStamp(r.path); after != st {
		// Written while being read (an editor that truncates, then
		// writes): what was read may be half the file.
		r.dirty = true
		return Unchanged, r.err
	}
	r.dirty = false
	r.stamp, r.readAt = st, now
	if errors.Is(readErr, fs.ErrNotExist) && !r.noFile {
		// The file was there and is gone (an editor never leaves it gone:
		// it renames the new file over the old). The defaults would drop
		// every stage from under a running watch.
		return r.reject(nil, &Error{File: r.path, Msg: "the file is gone; put it back (or restart to run on the defaults)"})
	}
	if readErr != nil && !errors.Is(readErr, fs.ErrNotExist) {
		var pe *fs.PathError
		if errors.As(readErr, &pe) && pe.Path == r.path {
			readErr = pe.Err
		}
		return r.reject(nil, &Error{File: r.path, Msg: fmt.Sprintf("cannot read: %v", readErr)})
	}
	if readErr == nil && !r.noFile && bytes.Equal(data, r.data) {
		return Unchanged, r.err
	}
	if readErr == nil && isEmpty(data) && !r.goodEmpty {
		// What a writer that truncates and then writes leaves between the
		// two, for longer than settleDelay on a loaded machine (seen in
		// CI): taken as the defaults it would drop every stage.
		return r.reject(data, &Error{File: r.path, Msg: "the file is empty; put the settings back (or restart to run on the defaults)"})
	}
	c, err := parse(r.path, r.required, data, readErr)
	if err != nil {
		return r.reject(data, err)
	}
	if c.Remote.Name != r.good.Remote.Name {
		// Where the state lives is chosen when a process starts: a
		// process that switched mid-run would act on local state as if
		// it were the shared one, or the other way round.
		return r.reject(data, &Error{File: r.path, Key: "remote.name", Msg: fmt.Sprintf(
			"changed from %q to %q while this process runs on %s; restart it to switch (put the old value back to keep it running)",
			r.good.Remote.Name, c.Remote.Name, stateWhere(r.good.Remote.Name))})
	}
	r.data, r.noFile = data, c.Path == ""
	r.good, r.goodAt, r.err = c, now, nil
	r.goodEmpty = isEmpty(data)
	return Reloaded, nil
}

// isEmpty says whether a file's content sets nothing at all (no bytes, or
// only white space).
func isEmpty(data []byte) bool { return len(bytes.TrimSpace(data)) == 0 }

func stateWhere(remote string) string {
	if remote == "" {
		return "this machine's local state"
	}
	return "the state shared on remote " + strconv.Quote(remote)
}

func (r *Reloader) reject(data []byte, err error) (Change, error) {
	said := r.err != nil && r.err.Error() == err.Error()
	// A file that is there but not readable still counts as there: if
	// it then goes, that is "gone", never "the defaults".
	r.data, r.err = data, err
	if data != nil {
		r.noFile = false
	}
	if said {
		return Unchanged, err
	}
	return Rejected, err
}

// Changes lists, in the order of orch.toml.example, the settings whose
// values differ from old to new, each as "key old → new"; a changed
// pipeline is one entry, "stages".
func Changes(old, new *Config) []string {
	type field struct {
		key string
		get func(*Config) string
	}
	i := func(f func(*Config) int) func(*Config) string {
		return func(c *Config) string { return strconv.Itoa(f(c)) }
	}
	b := func(f func(*Config) bool) func(*Config) string {
		return func(c *Config) string { return strconv.FormatBool(f(c)) }
	}
	fields := []field{
		{"target", func(c *Config) string { return strconv.Quote(c.Target) }},
		{"max_concurrency", i(func(c *Config) int { return c.MaxConcurrency })},
		{"worktrees", func(c *Config) string { return strconv.Quote(c.Worktrees) }},
		{"reaper.enabled", b(func(c *Config) bool { return c.Reaper.Enabled })},
		{"reaper.interval_s", i(func(c *Config) int { return c.Reaper.IntervalS })},
		{"reaper.dead_ticks", i(func(c *Config) int { return c.Reaper.DeadTicks })},
		{"reaper.finalize_grace_s", i(func(c *Config) int { return c.Reaper.FinalizeGraceS })},
		{"reaper.max_running_s", i(func(c *Config) int { return c.Reaper.MaxRunningS })},
		{"lease.reclaim_enabled", b(func(c *Config) bool { return c.Lease.ReclaimEnabled })},
		{"lease.ttl_s", i(func(c *Config) int { return c.Lease.TTLS })},
		{"hooks.budget_ms", i(func(c *Config) int { return c.Hooks.BudgetMS })},
		{"gc.older_than_s", i(func(c *Config) int { return c.GC.OlderThanS })},
		{"logs.max_bytes", i(func(c *Config) int { return c.Logs.MaxBytes })},
		{"remote.name", func(c *Config) string { return strconv.Quote(c.Remote.Name) }},
		{"remote.clock_skew_s", i(func(c *Config) int { return c.Remote.ClockSkewS })},
		{"remote.server_hook", b(func(c *Config) bool { return c.Remote.ServerHook })},
		{"remote.heartbeat_s", i(func(c *Config) int { return c.Remote.HeartbeatS })},
		{"remote.heartbeat_ttl_s", i(func(c *Config) int { return c.Remote.HeartbeatTTLS })},
		{"remote.host", func(c *Config) string { return strconv.Quote(c.Remote.Host) }},
		{"stages", func(c *Config) string { return fmt.Sprintf("%#v", c.Stages) }},
	}
	var out []string
	for _, f := range fields {
		o, n := f.get(old), f.get(new)
		switch {
		case o == n:
		case f.key == "stages":
			names := strings.Join(new.StageNames(), ", ")
			if names == "" {
				names = "none"
			}
			out = append(out, "stages ("+names+")")
		default:
			out = append(out, fmt.Sprintf("%s %s → %s", f.key, o, n))
		}
	}
	return out
}

// IntervalFallback is the reaper interval to use when orch.toml cannot be
// read (a hook saying so once per interval): ORCH_REAPER_INTERVAL_S when
// it is a valid number of seconds, else the default.
func IntervalFallback() time.Duration {
	if v := strings.TrimSpace(os.Getenv("ORCH_REAPER_INTERVAL_S")); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
	}
	return time.Duration(ReaperIntervalSDefault) * time.Second
}
