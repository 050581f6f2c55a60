//go:build linux || darwin || freebsd

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/statewatch"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands, &command{name: "watch", args: "[--interval D] [--once] [--no-dispatch] [--standby]",
		summary: "keep the pipeline going: dispatch as soon as there is work, reaper pass and lease reclaim every interval, with a live view",
		help: `Dispatches queued jobs up to max_concurrency as soon as the state changes
(a job enqueued, advanced or ended, a lease released, orch.toml changed:
within milliseconds, told by the file system), and every interval makes a
reaper pass (with stale lease reclaim) and a dispatch. Where the file
system cannot tell (or with ORCH_WATCH_NOTIFY=0) it says so in one line and
looks for work every second instead. On a terminal it shows a live view
(jobs by status with stage, branch, age, pid and gates; leases; the last
pass; the newest events), redrawn every second, on resize and on changes.
Piped, or with --once, it prints one line per event instead, without
escape codes. Ctrl-C or TERM exits cleanly; running jobs keep running
(their monitors are detached). orch.toml is re-read when it changes and
applied at once; a bad file keeps the last good configuration (no job is
started until it is fixed) and is shown with its file, line and key.
One dispatcher per repository: a second watch says who holds it and exits
1, or with --standby waits to take over. NO_COLOR turns colour off.`,
		setup: setupWatch})
}

func setupWatch(fs *flag.FlagSet, c *cli) func([]string) error {
	interval := fs.Duration("interval", 0, "time between passes (default: reaper.interval_s of orch.toml)")
	once := fs.Bool("once", false, "one pass and dispatch, print what happened, exit")
	noDispatch := fs.Bool("no-dispatch", false, "reap and show, but start no jobs")
	standby := fs.Bool("standby", false, "when another watch dispatches, wait and take over when it ends")
	return func(args []string) error {
		if err := needArgs("watch", args, 0, 0, "no arguments"); err != nil {
			return err
		}
		r, err := c.openRepo()
		if err != nil {
			return err
		}
		// The configuration is watched: a bad file at start is an error
		// like any command's, a bad file later keeps this one.
		path, required := config.Find(c.configFlag, r.MainWorktree, r.Worktree)
		rl, err := config.NewReloader(path, required)
		if err != nil {
			return err
		}
		c.cfg, c.cfgWarned = rl.Config(), true
		for _, w := range c.cfg.Warnings {
			c.errf("orch-hooks: warning: %v\n", w)
		}
		env, err := c.env()
		if err != nil {
			return err
		}
		w := &watcher{c: c, env: env, cfg: rl, intervalFlag: *interval, dispatch: !*noDispatch}
		w.interval = w.intervalOf(env.Config)
		w.exe, err = os.Executable()
		if err != nil {
			return fmt.Errorf("watch: find own executable: %w", err)
		}
		w.tty = !*once && isTerminal(c.rawStdout)
		w.color = w.tty && os.Getenv("NO_COLOR") == ""
		if w.dispatch {
			release, _, err := env.HoldDispatcher()
			if errors.Is(err, pipeline.ErrDispatcherHeld) {
				if !*standby {
					return fmt.Errorf("%w; stop that watch, run this one with --no-dispatch, or wait with --standby", err)
				}
				c.errf("standby: %v\n", err)
				release, err = env.WaitDispatcher(c.ctx, time.Second, func(h pipeline.DispatcherInfo) {
					w.note = fmt.Sprintf("standby: pid %d on %s dispatches since %s", h.PID, termtext.Line(h.Host), h.Since.Local().Format("15:04:05"))
				})
				if errors.Is(err, context.Canceled) {
					return nil
				}
			}
			if err != nil {
				return err
			}
			defer release()
			w.note = ""
		}
		return w.run(*once)
	}
}

type watcher struct {
	c            *cli
	env          *pipeline.Env
	cfg          *config.Reloader
	exe          string
	intervalFlag time.Duration // --interval; 0: reaper.interval_s
	interval     time.Duration
	pass         *time.Ticker // one tick per interval; reset when it changes
	dispatch     bool
	tty          bool
	color        bool
	note         string
	cfgNote      string // the last reload, shown for a while
	cfgNoteAt    time.Time
	offset       int64 // event log read position (line mode)

	// notify tells of state changes as they happen; nil when the file
	// system cannot (poll looks for work every pollEvery instead).
	notify *statewatch.Watcher
	poll   *time.Ticker
	// settle rechecks orch.toml once a change notified has settled.
	settle *time.Timer
	// leases as last said (line mode), by target, to say what changed.
	leases map[string]*lease.Lease
	// logModeAt is when env.Store.LogMode was last read (refreshLogMode).
	logModeAt time.Time

	// Remote mode (watch_remote.go): the shared queue as the last pass
	// saw it, to say what changed; the last pass's failure.
	shared    map[string]sharedSeen
	sharedErr string
}

// pollEvery is how often watch looks for work when the file system does
// not tell it of changes.
const pollEvery = time.Second

// configSettle is how long after its modification watch reads a notified
// orch.toml again: config.Reloader defers a file modified less than 50 ms
// ago (an editor may be half-way through writing it), so the read right
// after the notification may be deferred, and this one is not.
const configSettle = 52 * time.Millisecond

// NotifyEnv set to 0 turns file-system notifications off: watch then looks
// for work every pollEvery (for a state dir on a network file system, whose
// changes made on another machine are never notified).
const NotifyEnv = "ORCH_WATCH_NOTIFY"

// configCheckEvery is how often watch stats orch.toml between ticks, so a
// change is said (and a bad file shown) within a second even when the
// interval is long; a good change is applied by the next tick.
const configCheckEvery = time.Second

// cfgNoteFor is how long the live view says that the config was reloaded.
const cfgNoteFor = time.Minute

// intervalOf is the time between ticks under cfg: --interval when given,
// else reaper.interval_s, at least a second.
func (w *watcher) intervalOf(cfg *config.Config) time.Duration {
	iv := w.intervalFlag
	if iv <= 0 {
		iv = cfg.Reaper.Interval()
	}
	if iv <= 0 {
		iv = time.Second
	}
	return iv
}

func (w *watcher) run(once bool) error {
	ctx := w.c.ctx
	w.offset = w.env.Store.EventsEnd()
	if once {
		w.tick(ctx)
		return w.printEvents()
	}
	w.pass = time.NewTicker(w.interval)
	defer w.pass.Stop()
	w.settle = time.NewTimer(time.Hour)
	w.settle.Stop()
	defer w.settle.Stop()
	// Started before the first tick, so that a change during it is seen.
	w.leaseChanges(false)
	w.startNotify()
	defer w.stopNotify()
	if w.tty {
		return w.live(ctx)
	}
	check := time.NewTicker(configCheckEvery)
	defer check.Stop()
	w.tick(ctx)
	for {
		if err := w.printEvents(); err != nil {
			return err
		}
		if !w.next(ctx, check.C, nil) {
			return nil
		}
	}
}

// next waits for one thing to happen and handles it, the same for the
// piped and the live view: the interval's pass (a tick), orch.toml looked
// at (on check, and once it has settled), a notified change (reacted to),
// a poll standing for notifications (a dispatch), or wake alone (the live
// view's resize: nothing to do but redraw). It reports false once ctx is
// done.
func (w *watcher) next(ctx context.Context, check <-chan time.Time, wake <-chan os.Signal) bool {
	select {
	case <-ctx.Done():
		return false
	case <-w.pass.C:
		w.tick(ctx)
	case <-check:
		w.configChanged(ctx)
	case <-w.settle.C:
		w.configChanged(ctx)
	case <-w.notified():
		w.react(ctx)
	case <-w.polled():
		w.dispatchJobs(ctx)
	case <-wake:
	}
	return true
}

// startNotify starts the file-system watch of the state dir and orch.toml,
// or, when it cannot start, the poll that stands for it (said in one line).
func (w *watcher) startNotify() {
	if os.Getenv(NotifyEnv) == "0" {
		w.startPoll(NotifyEnv + "=0")
		return
	}
	n, err := statewatch.New(w.env.Store.Dir(), w.cfg.Path(), 0)
	if err != nil {
		w.startPoll(err.Error())
		return
	}
	w.notify = n
}

func (w *watcher) startPoll(why string) {
	msg := fmt.Sprintf("watch: not told of changes by the file system (%s); looking for work every %s", termtext.Line(why), pollEvery)
	if w.tty {
		w.note = msg
	} else {
		w.say("%s", msg)
	}
	w.poll = time.NewTicker(pollEvery)
}

func (w *watcher) stopNotify() {
	if w.notify != nil {
		w.notify.Close()
	}
	if w.poll != nil {
		w.poll.Stop()
	}
}

// notified receives when the file system told of changes (never when
// watch polls instead).
func (w *watcher) notified() <-chan struct{} {
	if w.notify == nil {
		return nil
	}
	return w.notify.Ready()
}

// polled receives every pollEvery when watch polls for lack of
// notifications.
func (w *watcher) polled() <-chan time.Time {
	if w.poll == nil {
		return nil
	}
	return w.poll.C
}

// react handles the changes notified: a changed orch.toml is read (and a
// good one applied at once), and a change that may give work (a job
// enqueued, advanced or ended, a lease released, a config applied) is
// followed by a dispatch, so that a queued job never waits for the clock
// while a slot is free. A watch that stopped working says so and polls.
func (w *watcher) react(ctx context.Context) {
	c := w.notify.Take()
	if err := w.notify.Err(); err != nil {
		w.notify.Close()
		w.notify = nil
		w.startPoll(err.Error())
		c = statewatch.All
	}
	if c&statewatch.Leases != 0 && !w.tty {
		w.leaseChanges(true)
	}
	if c&statewatch.Config != 0 {
		w.cfg.Invalidate()
		switch w.checkConfig() {
		case config.Reloaded:
			c |= statewatch.Work
		case config.Unchanged:
			// Maybe deferred as too fresh: look again once it is not.
			wait := configSettle
			if st := config.StatStamp(w.cfg.Path()); st.Exists {
				wait = time.Until(time.Unix(0, st.MTime).Add(configSettle))
			}
			w.settle.Reset(min(max(wait, time.Millisecond), configSettle))
		}
	}
	if c&statewatch.Work != 0 {
		w.dispatchJobs(ctx)
	}
}

// leaseChanges reads the leases and, with say, prints one line per lease
// that became free or was taken since the last call (a renewal is no news).
func (w *watcher) leaseChanges(say bool) {
	ls, _, err := lease.Open(w.env.Store.Dir()).List()
	if err != nil {
		return // said by the next pass, which lists them too
	}
	now := make(map[string]*lease.Lease, len(ls))
	for _, l := range ls {
		now[l.Target] = l
	}
	if say {
		for _, t := range slices.Sorted(maps.Keys(w.leases)) {
			if l, old := now[t], w.leases[t]; l == nil || l.Token != old.Token {
				w.say("lease: %s is free (held by %s with token %d until now)", termtext.Line(t), termtext.Line(old.Holder), old.Token)
			}
		}
		for _, t := range slices.Sorted(maps.Keys(now)) {
			if l, old := now[t], w.leases[t]; old == nil || old.Token != l.Token {
				w.say("lease: %s taken by %s (token %d)", termtext.Line(t), termtext.Line(l.Holder), l.Token)
			}
		}
	}
	w.leases = now
}

// configChanged checks orch.toml and dispatches at once when a good new
// file was applied (it may allow more jobs).
func (w *watcher) configChanged(ctx context.Context) {
	if w.checkConfig() == config.Reloaded {
		w.dispatchJobs(ctx)
	}
}

// checkConfig re-reads orch.toml when it changed (config.Reloader) and
// applies a good new file at once: max_concurrency to the
// next dispatch, the reaper and lease settings and stages to the next
// pass, reaper.interval_s to the tick timer at once (unless --interval
// was given). A bad file keeps the last good configuration: the error is
// said (piped: one line; live view: shown until fixed) and no job is
// started until the file is fixed, since a job's monitor reads the file
// when it starts. A change notification (a file-system watch) calls
// w.cfg.Invalidate and then this. It returns what Check found.
func (w *watcher) checkConfig() config.Change {
	ch, err := w.cfg.Check()
	switch ch {
	case config.Reloaded:
		old := w.env.Config
		w.env.Config = w.cfg.Config()
		what := "no setting changed"
		if changes := config.Changes(old, w.env.Config); len(changes) > 0 {
			what = strings.Join(changes, ", ")
		}
		w.cfgNote = fmt.Sprintf("config reloaded from %s: %s", w.cfg.Path(), what)
		w.cfgNoteAt = time.Now()
		if !w.tty {
			w.say("config: reloaded %s: %s", termtext.Line(w.cfg.Path()), what)
			for _, warn := range w.env.Config.Warnings {
				w.say("config: warning: %s", termtext.Line(warn.Error()))
			}
		}
		if iv := w.intervalOf(w.env.Config); iv != w.interval {
			w.interval = iv
			if w.pass != nil {
				w.pass.Reset(iv)
			}
		}
	case config.Rejected:
		if !w.tty {
			w.say("config: rejected %s; still running on the config loaded at %s, and starting no jobs until the file is fixed",
				termtext.Line(err.Error()), w.cfg.LoadedAt().UTC().Format(time.RFC3339))
		}
	}
	return ch
}

// tick is one round: a reaper pass (which reclaims stale leases) and a
// dispatch. Errors go to the snapshot or, for dispatch, to the output; the
// loop never dies from one bad job.
func (w *watcher) tick(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	w.checkConfig()
	w.env.Store.Actor = "watch"
	if w.env.Shared != nil {
		w.sharedTick(ctx)
	}
	func() {
		if unlock, err := statefile.TryLock(w.env.Store.LockPath(hooks.PassLock)); err == nil {
			defer unlock()
		}
		snap, err := reaper.RunOnce(ctx, w.env, reaper.Options{Leases: lease.Open(w.env.Store.Dir())})
		if err != nil {
			w.say("reaper pass: %s", termtext.Line(err.Error()))
			return
		}
		if !w.tty {
			for _, a := range snap.Actions {
				if a.Observation {
					continue
				}
				w.say("reaper: %s", a)
			}
			for _, e := range snap.Errors {
				w.say("reaper error: %s", passErrorString(e))
			}
		}
	}()
	w.dispatchJobs(ctx)
}

// dispatchJobs starts queued jobs up to max_concurrency (not with
// --no-dispatch, and not while orch.toml is bad: a monitor started now
// would refuse it, and checkConfig said so).
func (w *watcher) dispatchJobs(ctx context.Context) {
	if w.dispatch && ctx.Err() == nil && w.cfg.Err() == nil {
		w.refreshLogMode(ctx)
		started, err := w.env.Dispatch(ctx, w.env.StartMonitor(w.exe, w.env.MonitorArgs()...))
		if !w.tty {
			for _, id := range started {
				w.say("dispatch: started %s", id)
			}
		}
		if err != nil && ctx.Err() == nil {
			w.note = "dispatch: " + oneLine(err.Error())
			if !w.tty {
				w.say("dispatch: %s", termtext.Line(err.Error()))
			}
		}
	}
}

// refreshLogMode fixes the mode of the job logs this watch creates
// (StartMonitor opens each started job's log) from core.sharedRepository,
// as gitstate.Store does for each log, but once per interval: a git process
// per dispatched job was a fifth of the time from a job's enqueue to its
// command's start. A change of core.sharedRepository applies within an
// interval.
func (w *watcher) refreshLogMode(ctx context.Context) {
	if !w.logModeAt.IsZero() && time.Since(w.logModeAt) < w.interval {
		return
	}
	w.logModeAt = time.Now()
	gitDir := filepath.Dir(w.env.Store.Dir())
	v, err := gitstate.Git(ctx, gitDir, "--git-dir", gitDir, "config", "--get", "core.sharedRepository")
	if err != nil {
		v = "" // unset (exit 1), or no answer: owner only, as the store does
	}
	w.env.Store.LogMode = gitstate.SharedLogMode(v)
}

func (w *watcher) say(format string, args ...any) {
	fmt.Fprintf(w.c.stdout, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

// printEvents prints the transitions appended to the event log since the
// last call, one line each.
func (w *watcher) printEvents() error {
	evs, off, err := w.env.Store.EventsFrom(w.offset)
	if err != nil {
		return err
	}
	w.offset = off
	for _, e := range evs {
		fmt.Fprintf(w.c.stdout, "%s %s\n", e.At.UTC().Format(time.RFC3339), eventLine(e))
	}
	return nil
}

// live runs the terminal view: the alternate screen, redrawn every second,
// on resize, after each tick and on each change notified, restored on exit.
// It writes its own escape codes to the raw stream; render escapes every
// text it shows.
func (w *watcher) live(ctx context.Context) error {
	out := w.c.rawStdout
	io.WriteString(out, "\x1b[?1049h\x1b[?25l") // alternate screen, hide cursor
	defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	// configCheckEvery is the redraw period too.
	redraw := time.NewTicker(configCheckEvery)
	defer redraw.Stop()
	w.tick(ctx)
	for {
		w.draw()
		if !w.next(ctx, redraw.C, winch) {
			return nil
		}
	}
}

// draw renders one frame in a single write: cursor home, each line cleared
// to its end, the rest of the screen cleared; no blank flash in between.
func (w *watcher) draw() {
	width, height := terminalSize(w.c.rawStdout)
	lines := render(w.collect(), width, height, w.color)
	var b strings.Builder
	b.WriteString("\x1b[H")
	for i, l := range lines {
		b.WriteString(l)
		b.WriteString("\x1b[K")
		if i < len(lines)-1 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\x1b[J")
	io.WriteString(w.c.rawStdout, b.String())
}

func (w *watcher) collect() frame {
	repo := w.env.Repo.MainWorktree
	if repo == "" {
		repo = w.env.MonitorDir() // bare, or a main worktree nothing records
	}
	f := frame{Now: time.Now(), Repo: repo, Interval: w.interval, Dispatch: w.dispatch, Note: w.note}
	if err := w.cfg.Err(); err != nil {
		f.ConfigError, f.ConfigLoadedAt = err.Error(), w.cfg.LoadedAt()
	} else if f.Now.Sub(w.cfgNoteAt) < cfgNoteFor {
		f.ConfigNote = w.cfgNote
	}
	if f.Repo == "" {
		f.Repo = w.env.Repo.CommonDir
	}
	s := w.env.Store
	if l, err := s.Active(); err == nil {
		f.Jobs = l.Jobs
		f.Unreadable += len(l.Unreadable)
	}
	if r, err := s.Recent(5); err == nil {
		f.Jobs = append(f.Jobs, r.Jobs...)
	}
	f.Leases, _, _ = lease.Open(s.Dir()).List()
	if st, err := reaper.LoadState(s.Dir()); err == nil {
		f.Pass = st.LastPass
	}
	f.Events, _ = s.TailEvents(8)
	if w.env.Shared != nil {
		f.Shared = w.sharedFrame()
	}
	return f
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), ioctlGetTermios)
	return err == nil
}

func terminalSize(w io.Writer) (int, int) {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 && ws.Row > 0 {
			return int(ws.Col), int(ws.Row)
		}
	}
	return 100, 40
}
