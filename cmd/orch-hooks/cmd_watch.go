package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/reaper"
	"github.com/orch-hooks/orch-hooks/statefile"
	"github.com/orch-hooks/orch-hooks/termtext"
)

func init() {
	commands = append(commands, &command{name: "watch", args: "[--interval D] [--once] [--no-dispatch] [--standby]",
		summary: "keep the pipeline going: reaper pass, lease reclaim and dispatch every interval, with a live view",
		help: `Every interval: a reaper pass (with stale lease reclaim) and a dispatch of
queued jobs up to max_concurrency. On a terminal it shows a live view (jobs
by status with stage, branch, age, pid and gates; leases; the last pass; the
newest events), redrawn every second and on resize. Piped, or with --once,
it prints one line per event instead, without escape codes. Ctrl-C or TERM
exits cleanly; running jobs keep running (their monitors are detached).
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
		env, err := c.env()
		if err != nil {
			return err
		}
		w := &watcher{c: c, env: env, interval: *interval, dispatch: !*noDispatch}
		if w.interval <= 0 {
			w.interval = env.Config.Reaper.Interval()
		}
		if w.interval <= 0 {
			w.interval = time.Second
		}
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
	c        *cli
	env      *pipeline.Env
	exe      string
	interval time.Duration
	dispatch bool
	tty      bool
	color    bool
	note     string
	offset   int64 // event log read position (line mode)
}

func (w *watcher) run(once bool) error {
	ctx := w.c.ctx
	w.offset = w.env.Store.EventsEnd()
	if once {
		w.tick(ctx)
		return w.printEvents()
	}
	if w.tty {
		return w.live(ctx)
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.tick(ctx)
		if err := w.printEvents(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// tick is one round: a reaper pass (which reclaims stale leases) and a
// dispatch. Errors go to the snapshot or, for dispatch, to the output; the
// loop never dies from one bad job.
func (w *watcher) tick(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	w.env.Store.Actor = "watch"
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
	if w.dispatch && ctx.Err() == nil {
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
// on resize and after each tick, restored on exit. It writes its own escape
// codes to the raw stream; render escapes every text it shows.
func (w *watcher) live(ctx context.Context) error {
	out := w.c.rawStdout
	io.WriteString(out, "\x1b[?1049h\x1b[?25l") // alternate screen, hide cursor
	defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	redraw := time.NewTicker(time.Second)
	defer redraw.Stop()
	pass := time.NewTicker(w.interval)
	defer pass.Stop()
	w.tick(ctx)
	for {
		w.draw()
		select {
		case <-ctx.Done():
			return nil
		case <-pass.C:
			w.tick(ctx)
		case <-redraw.C:
		case <-winch:
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
	return f
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
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
