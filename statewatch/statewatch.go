// Package statewatch tells a dispatcher (watch) when the state dir or its
// configuration file changed in a way that may give it work, so that it
// reacts within milliseconds instead of waiting for its next interval.
//
// It watches, with fsnotify (inotify on Linux, kqueue on macOS and the BSDs,
// ReadDirectoryChangesW on Windows):
//
//   - active/: a marker removed (a job ended or was cancelled: a slot may
//     be free);
//   - active/: a marker created (a job enqueued, or the next stage's job
//     of an advance), told once the job's record is there: gitstate writes
//     the marker first and the record after it, and a reader skips a
//     marker without a record, so a dispatch told of the marker alone
//     could find nothing. The record is looked for (a stat every 2 ms, for
//     a second at most) rather than watched: jobs/ holds every ended job's
//     record, and kqueue (macOS, the BSDs) opens a descriptor per file of
//     a watched directory;
//   - running/: a marker removed (a running job ended);
//   - advance/: a marker created (a done job is about to enqueue its next);
//   - leases/: a lease record removed (released or reclaimed), and, as
//     Leases only, one written (taken, renewed);
//   - the state dir itself: one of those directories created (a state dir of
//     an older version may lack one; it is watched from then on), and the
//     event log growing;
//   - the directory of the configuration file, for that file's name only
//     (watching the directory, not the file: editors replace a file by
//     renaming a new one over it, which a watch on the old file never sees).
//
// Bursts are coalesced: the first change is told at once and opens a window
// of Delay; the changes that come in the window, and any until the
// consumer takes them, are folded into one Change told when it closes. So
// a lone change costs no wait, and 100 jobs enqueued at once make a few
// dispatches, not 100. A notification never carries the content of the
// change: the consumer looks at the state itself, as it would on its
// interval tick, so a lost or spurious notification costs a look or a
// delay, never a wrong decision.
package statewatch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/orch-hooks/orch-hooks/statefile"
)

// Change says what kind of change arrived since the last Take; several
// kinds are or-ed together.
type Change uint8

const (
	// Work: a job enqueued, advanced or ended, or a lease released: a
	// dispatch may have work.
	Work Change = 1 << iota
	// Config: the configuration file was written, created, replaced or
	// removed.
	Config
	// Events: the event log grew.
	Events
	// Leases: a lease record was written or removed (taken, renewed,
	// released, reclaimed); a removal is Work too.
	Leases

	// All is what an overflowed or failed watch reports: look at everything.
	All = Work | Config | Events | Leases
)

// DelayDefault is the coalescing window: after a change is told, the next
// is told no sooner than this. Short next to the 100 ms watch promises;
// long enough that the few files one transition touches (a record, two
// markers, an event line) make one or two notifications.
const DelayDefault = 15 * time.Millisecond

// The directories of the state dir whose changes mean work (see the package
// comment); gitstate.Store and lease.Manager own their names.
const (
	jobsDir    = "jobs"
	activeDir  = "active"
	runningDir = "running"
	advanceDir = "advance"
	leasesDir  = "leases"
	eventsFile = "events.jsonl"
)

var watchedSubdirs = []string{activeDir, runningDir, advanceDir, leasesDir}

// recordExt ends a job record's name in jobs/.
const recordExt = ".toml"

// enqueuingMax bounds the ids waited for between an active/ marker and its
// record.
const enqueuingMax = 4096

// recordLook is how often the records of new markers are looked for, and
// recordWait how long: an enqueuer that died between marker and record
// leaves a job no reader sees until the next Create completes it.
const (
	recordLook = 2 * time.Millisecond
	recordWait = time.Second
)

// Watcher reports changes of one state dir and one configuration file.
// Ready and Take may be used from one goroutine at a time; Close from any.
type Watcher struct {
	fs       *fsnotify.Watcher
	stateDir string
	cfgDir   string // "" when no configuration file is watched
	cfgName  string
	delay    time.Duration
	// enqueuing holds the ids whose active/ marker was created and whose
	// record has not been seen yet, with when to give up (loop goroutine
	// only).
	enqueuing map[string]time.Time

	mu      sync.Mutex
	pending Change
	armed   bool
	err     error // set once the watch stopped working
	ready   chan struct{}
	closed  chan struct{}
	done    chan struct{}
}

// New starts watching stateDir and, when configPath is not empty, the
// directory holding configPath for changes of that file. delay is the
// coalescing window (0: DelayDefault). It fails when the platform or the
// file system cannot watch (no inotify, the per-user limit of watches or
// instances reached); the caller then polls.
func New(stateDir, configPath string, delay time.Duration) (*Watcher, error) {
	if delay <= 0 {
		delay = DelayDefault
	}
	fw, err := fsnotify.NewBufferedWatcher(256)
	if err != nil {
		return nil, fmt.Errorf("watch %s for changes: %w", stateDir, err)
	}
	w := &Watcher{
		fs:        fw,
		enqueuing: map[string]time.Time{},
		stateDir:  filepath.Clean(stateDir),
		delay:     delay,
		ready:     make(chan struct{}, 1),
		closed:    make(chan struct{}),
		done:      make(chan struct{}),
	}
	// The state dir first, so that a subdirectory created while the others
	// are added is seen (and added) by the loop.
	if err := fw.Add(w.stateDir); err != nil {
		fw.Close()
		return nil, fmt.Errorf("watch %s for changes: %w", w.stateDir, err)
	}
	for _, d := range watchedSubdirs {
		if err := w.addSubdir(d); err != nil {
			fw.Close()
			return nil, err
		}
	}
	if configPath != "" {
		abs, err := filepath.Abs(configPath)
		if err != nil {
			fw.Close()
			return nil, fmt.Errorf("watch %s for changes: %w", configPath, err)
		}
		w.cfgDir, w.cfgName = filepath.Dir(abs), filepath.Base(abs)
		if w.cfgDir != w.stateDir {
			if err := fw.Add(w.cfgDir); err != nil {
				fw.Close()
				return nil, fmt.Errorf("watch %s for changes of %s: %w", w.cfgDir, w.cfgName, err)
			}
		}
	}
	go w.loop()
	return w, nil
}

// addSubdir watches stateDir/name; a directory that does not exist (yet) is
// no error: its creation is seen in the state dir.
func (w *Watcher) addSubdir(name string) error {
	p := filepath.Join(w.stateDir, name)
	err := w.fs.Add(p)
	if err == nil || isNotExist(err) {
		return nil
	}
	return fmt.Errorf("watch %s for changes: %w", p, err)
}

// Ready receives a value when changes are waiting for Take.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Take returns the changes since the last Take (0 when a notification
// raced with an earlier Take that already had them).
func (w *Watcher) Take() Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.pending
	w.pending = 0
	return c
}

// Err is why the watch stopped working, nil while it works. Once it is set,
// the last Take returned All and no further change is reported: the caller
// polls instead.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watch. Ready receives nothing more.
func (w *Watcher) Close() error {
	select {
	case <-w.closed:
		return nil
	default:
	}
	close(w.closed)
	err := w.fs.Close()
	<-w.done
	return err
}

func (w *Watcher) loop() {
	defer close(w.done)
	look := time.NewTimer(time.Hour)
	look.Stop()
	defer look.Stop()
	looking := false
	for {
		if len(w.enqueuing) > 0 && !looking {
			look.Reset(recordLook)
			looking = true
		}
		select {
		case <-w.closed:
			return
		case <-look.C:
			looking = false
			w.note(w.lookForRecords())
		case ev, ok := <-w.fs.Events:
			if !ok {
				w.fail(errors.New("the file-system watch ended"))
				return
			}
			w.note(w.classify(ev))
		case err, ok := <-w.fs.Errors:
			if !ok {
				w.fail(errors.New("the file-system watch ended"))
				return
			}
			// An overflowed queue lost changes: look at everything. Other
			// errors (a short read) are the same as far as we know.
			_ = err
			w.note(All)
		}
	}
}

// fail records that the watch no longer works and tells the consumer to
// look at everything once more.
func (w *Watcher) fail(err error) {
	select {
	case <-w.closed:
		return
	default:
	}
	w.mu.Lock()
	w.err = err
	w.pending |= All
	w.mu.Unlock()
	w.signal()
}

// note folds c into the pending changes: told at once when no window is
// open, else when it closes.
func (w *Watcher) note(c Change) {
	if c == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending |= c
	if w.armed {
		return
	}
	w.signal()
	w.openWindow()
}

// openWindow arms the timer that closes a window (w.mu held): changes
// pending then are told, and a new window opens for those after them.
func (w *Watcher) openWindow() {
	w.armed = true
	time.AfterFunc(w.delay, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		select {
		case <-w.closed:
			w.armed = false
			return
		default:
		}
		if w.pending == 0 {
			w.armed = false
			return
		}
		w.signal()
		w.openWindow()
	})
}

func (w *Watcher) signal() {
	select {
	case w.ready <- struct{}{}:
	default: // one is waiting already; Take gets everything
	}
}

// classify says what an event means (0: nothing to react to).
func (w *Watcher) classify(ev fsnotify.Event) Change {
	name := filepath.Clean(ev.Name)
	dir, base := filepath.Dir(name), filepath.Base(name)
	var c Change
	if w.cfgDir != "" && dir == w.cfgDir && base == w.cfgName {
		c |= Config
	}
	if statefile.IsTemp(base) {
		// A record being written: its rename into place is the change.
		return c
	}
	switch dir {
	case w.stateDir:
		switch {
		case base == eventsFile && ev.Has(fsnotify.Write|fsnotify.Create):
			c |= Events
		case ev.Has(fsnotify.Create) && isWatchedSubdir(base):
			// Created after New (an older state dir, a first lease):
			// watch it, and look, since what it holds now was not seen.
			if err := w.addSubdir(base); err != nil {
				w.fail(err)
			}
			c |= Work
		}
	case filepath.Join(w.stateDir, activeDir):
		switch {
		case ev.Has(fsnotify.Create):
			if w.hasRecord(base) {
				c |= Work
				break
			}
			if len(w.enqueuing) >= enqueuingMax {
				c |= Work // too many to follow: look now
				break
			}
			w.enqueuing[base] = time.Now().Add(recordWait)
		case ev.Has(fsnotify.Remove | fsnotify.Rename):
			delete(w.enqueuing, base)
			c |= Work
		}
	case filepath.Join(w.stateDir, runningDir):
		if ev.Has(fsnotify.Remove | fsnotify.Rename) {
			c |= Work
		}
	case filepath.Join(w.stateDir, advanceDir):
		if ev.Has(fsnotify.Create) {
			c |= Work
		}
	case filepath.Join(w.stateDir, leasesDir):
		if !strings.HasSuffix(base, ".toml") {
			break
		}
		if ev.Has(fsnotify.Create | fsnotify.Remove | fsnotify.Rename) {
			c |= Leases
		}
		if ev.Has(fsnotify.Remove | fsnotify.Rename) {
			c |= Work
		}
	}
	return c
}

// hasRecord reports whether job id's record is in jobs/.
func (w *Watcher) hasRecord(id string) bool {
	_, err := os.Lstat(filepath.Join(w.stateDir, jobsDir, id+recordExt))
	return err == nil
}

// lookForRecords tells Work when a record followed a new marker, and
// forgets the markers waited for too long.
func (w *Watcher) lookForRecords() Change {
	var c Change
	now := time.Now()
	for id, until := range w.enqueuing {
		switch {
		case w.hasRecord(id):
			delete(w.enqueuing, id)
			c |= Work
		case now.After(until):
			delete(w.enqueuing, id)
		}
	}
	return c
}

func isWatchedSubdir(name string) bool {
	for _, d := range watchedSubdirs {
		if d == name {
			return true
		}
	}
	return false
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
