package pipeline

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ReadyFDEnv names the file descriptor on which a monitor started by
// StartMonitor reports its claim: "ok" or "error: <message>", then closes.
const ReadyFDEnv = "ORCH_MONITOR_READY_FD"

// ClaimWaitDefault bounds how long a dispatcher waits for a monitor it
// started to report its claim.
const ClaimWaitDefault = 30 * time.Second

// MonitorStarter starts a detached monitor for a job and returns once the
// monitor has reported its claim.
type MonitorStarter func(ctx context.Context, id string) error

// Dispatch is DispatchAll returning the ids of the jobs it started.
func (e *Env) Dispatch(ctx context.Context, start MonitorStarter) (started []string, err error) {
	d, err := e.DispatchAll(ctx, start)
	return d.Started, err
}

// Dispatched is what a dispatch did.
type Dispatched struct {
	// Started are the queued jobs it started, in order.
	Started []string
	// Adopted are the running jobs it started a new monitor for (their
	// monitor was dead: AdoptionDue). Started, not won: of the adopters
	// started for a job, by this dispatch or anyone, one takes it over.
	Adopted []Adoption
}

// Adoption is one new monitor started for a running job (Env.Adopter).
type Adoption struct {
	Job string `json:"job"`
	Why string `json:"why"` // what AdoptionDue saw
}

// DispatchAll starts a new monitor for every running job of this host that
// needs one (AdoptionDue), then queued jobs, oldest first, while the jobs
// running on this host are fewer than max_concurrency. Dispatchers exclude
// each other with a lock and each started monitor reports its claim before
// the next job is considered, so two dispatches at once never exceed the
// limit and never start a job twice. A job that could not be started or
// adopted is reported in the error and the others still go.
func (e *Env) DispatchAll(ctx context.Context, start MonitorStarter) (d Dispatched, err error) {
	unlock, err := statefile.Lock(ctx, e.Store.LockPath("dispatch"))
	if err != nil {
		return d, fmt.Errorf("dispatch: %w", err)
	}
	defer unlock()
	var errs []error
	tried := map[string]bool{}
	for first := true; ; first = false {
		l, err := e.Store.Active()
		if err != nil {
			return d, err
		}
		if first {
			// A job whose monitor died while its outcome can still be had
			// gets a new monitor; it still counts as running below.
			var aerrs []error
			d.Adopted, aerrs = e.adoptOrphans(ctx, l.Jobs)
			errs = append(errs, aerrs...)
		}
		running := 0
		var next *gitstate.Job
		for _, j := range l.Jobs {
			switch {
			case j.Status == gitstate.Running && procid.Local(j.Monitor):
				running++
			case j.Status == gitstate.Queued && next == nil && !tried[j.ID]:
				next = j
			}
		}
		if next == nil || running >= e.Config.MaxConcurrency {
			return d, errors.Join(errs...)
		}
		tried[next.ID] = true
		if err := start(ctx, next.ID); err != nil {
			if !errors.Is(err, ErrNotQueued) {
				errs = append(errs, fmt.Errorf("start %s: %w", next.ID, err))
			}
			continue
		}
		d.Started = append(d.Started, next.ID)
	}
}

// StartMonitor returns a MonitorStarter that runs `exe [args...] run JOB` as
// a detached monitor: in its own session (so the caller's death or its
// terminal's hangup does not reach it), stdin from /dev/null, output
// appended to the job's log, in MonitorDir. args should name that directory
// (-C) and the configuration file this process loaded (--config, absolute)
// so that the monitor sees the repository and configuration it was
// dispatched with: MonitorArgs.
func (e *Env) StartMonitor(exe string, args ...string) MonitorStarter {
	return func(ctx context.Context, id string) error {
		logf, err := e.Store.OpenLog(id)
		if err != nil {
			return err
		}
		defer logf.Close()
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		cmd := exec.Command(exe, append(append([]string(nil), args...), "run", id)...)
		cmd.Dir = e.MonitorDir()
		cmd.Env = append(os.Environ(), ReadyFDEnv+"=3")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.ExtraFiles = []*os.File{w}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
		w.Close()
		if err != nil {
			return fmt.Errorf("start monitor: %w", err)
		}
		// Reap it when it ends, for callers that live on (watch).
		go cmd.Wait()
		type answer struct {
			line string
			err  error
		}
		got := make(chan answer, 1)
		go func() {
			line, err := bufio.NewReader(r).ReadString('\n')
			got <- answer{strings.TrimSpace(line), err}
		}()
		t := time.NewTimer(ClaimWaitDefault)
		defer t.Stop()
		select {
		case a := <-got:
			switch {
			case a.line == "ok":
				return nil
			case strings.HasPrefix(a.line, "error: "):
				msg := strings.TrimPrefix(a.line, "error: ")
				if strings.Contains(msg, ErrNotQueued.Error()) {
					return fmt.Errorf("%s: %w", msg, ErrNotQueued)
				}
				return errors.New(msg)
			default:
				return fmt.Errorf("monitor ended without reporting its claim (see %s)", e.Store.LogPath(id))
			}
		case <-t.C:
			return fmt.Errorf("monitor did not report its claim within %s (see %s)", ClaimWaitDefault, e.Store.LogPath(id))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// MonitorArgs are the global flags of a detached monitor (StartMonitor) or
// background pass started by this process: -C MonitorDir, and --config with
// the absolute path of the configuration file loaded, when there is one.
func (e *Env) MonitorArgs() []string {
	args := []string{"-C", e.MonitorDir()}
	if p := e.Config.Path; p != "" {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		args = append(args, "--config", p)
	}
	return args
}

// Retry enqueues the next attempt of a failed or cancelled job: same task,
// stage and branch, the first attempt after the job's whose id gc has not
// collected (attempt + 1 unless that one already ran and was collected).
// The old record is untouched. Retrying the same job again finds the
// attempt already made (created=false).
func (e *Env) Retry(id string) (j *gitstate.Job, created bool, err error) {
	old, err := e.Store.Get(id)
	if err != nil {
		return nil, false, err
	}
	if old.Status != gitstate.Failed && old.Status != gitstate.Cancelled {
		hint := ""
		if h := e.NewAttemptHint(old); old.Status == gitstate.Done && h != "" {
			hint = "; " + h
		}
		return old, false, fmt.Errorf("job %s is %s: %w: only a failed or cancelled job can be retried%s", id, old.Status, ErrWrongStatus, hint)
	}
	r := Request{Task: old.Task, Stage: old.Stage, Branch: old.Branch, Target: old.Target, Attempt: old.Attempt + 1}
	free, err := e.nextFreeAttempt(r)
	if err != nil {
		return nil, false, fmt.Errorf("retry %s: %w", id, err)
	}
	if free == 0 {
		return nil, false, fmt.Errorf("retry %s: attempts %d to %d were all collected by gc; %w", id, r.Attempt, r.Attempt+maxAttemptProbe-1, ErrWrongStatus)
	}
	r.Attempt = free
	return e.Enqueue(r)
}
