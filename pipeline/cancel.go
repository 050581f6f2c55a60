package pipeline

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

// Cancel ends a queued or running job as cancelled. The claim comes first;
// only the winner, and only for a job that was running, stops its processes:
// TERM to the command's process group (and a running finalize step's), then
// KILL after a grace. won is false, with the current record, when the job
// had already ended.
func (e *Env) Cancel(ctx context.Context, id string) (j *gitstate.Job, won bool, err error) {
	j, won, err = e.Store.Claim(ctx, id, []gitstate.Status{gitstate.Queued, gitstate.Running}, gitstate.Cancelled, "cancelled by user",
		func(j *gitstate.Job) { j.EndedBy = gitstate.EndedByCancel })
	var ue *gitstate.UnreadableError
	if errors.As(err, &ue) {
		// A record that does not decode can be changed by nothing else:
		// end it with a new record, its bytes kept aside. One that cannot
		// be read at all (a FIFO, a permission) is left alone: the error
		// stands.
		ej, ended, eerr := e.Store.EndUndecodable(ctx, id, gitstate.Cancelled, gitstate.EndedByCancel, "cancelled by user")
		if errors.Is(eerr, gitstate.ErrDecodable) {
			return j, false, err
		}
		if eerr != nil {
			return nil, false, fmt.Errorf("%w; ending it anyway: %w", err, eerr)
		}
		j, won, err = ej, ended, nil
		if !won {
			return j, false, nil
		}
	} else if err != nil || !won {
		return j, won, err
	}
	if last := j.History[len(j.History)-1]; last.From == gitstate.Running {
		if err := StopGroups(j, killGrace); err != nil {
			return j, true, fmt.Errorf("job %s cancelled, but stopping its processes: %w", id, err)
		}
	}
	return j, true, nil
}

// StopGroups stops the process groups of a job that has been claimed
// terminal by the caller: TERM, then KILL to whatever is left after grace.
// Groups are confirmed by identity first, so a recycled group id is never
// signalled. It returns once every group is gone (or was never ours). A
// group of this machine that cannot be judged from here (recorded in
// another pid namespace, or this process's /proc is not its own) is not
// signalled, and is an error: it was not stopped.
func StopGroups(j *gitstate.Job, grace time.Duration) error {
	var leaders []procid.Identity
	var errs []error
	for _, l := range []procid.Identity{j.Command, j.Finalizer} {
		ok, err := procid.Judgeable(l)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("process group %s not stopped: %w", l, err))
		case !ok && procid.Local(l):
			errs = append(errs, fmt.Errorf("process group %s not stopped: it was recorded in another pid namespace (%d); stop it from inside that namespace", l, l.PidNS))
		case ok:
			leaders = append(leaders, l)
		}
	}
	if err := stopJudgeable(leaders, grace); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func stopJudgeable(leaders []procid.Identity, grace time.Duration) error {
	for _, l := range leaders {
		if _, err := procid.SignalGroup(l, syscall.SIGTERM); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(grace)
	for _, l := range leaders {
		for {
			alive, err := procid.GroupLiveness(l)
			if err != nil {
				return err
			}
			if alive != procid.Alive {
				break
			}
			if time.Now().After(deadline) {
				if _, err := procid.SignalGroup(l, syscall.SIGKILL); err != nil {
					return err
				}
				break
			}
			time.Sleep(20 * time.Millisecond) // polling a process we do not own: no wait(2) for it
		}
	}
	return nil
}
