package pipeline

import (
	"errors"
	"fmt"

	"github.com/orch-hooks/orch-hooks/gitstate"
)

// NewAttemptHint says how to run ended job j's stage again, for a message
// that refuses to run or create j itself: a failed or cancelled job is
// retried (orch-hooks retry, which picks the attempt); a done job cannot be,
// so the hint is the enqueue of the first later attempt that neither exists
// nor was collected by gc. It is "" for a job that has not ended, or when no
// such attempt is found close by.
func (e *Env) NewAttemptHint(j *gitstate.Job) string {
	switch j.Status {
	case gitstate.Failed, gitstate.Cancelled:
		return fmt.Sprintf("orch-hooks retry %s makes a new attempt", j.ID)
	case gitstate.Done:
	default:
		return ""
	}
	for a := j.Attempt + 1; a < j.Attempt+1+maxAttemptProbe; a++ {
		id := gitstate.JobID(j.Task, j.Stage, a)
		if _, err := e.Store.Get(id); !errors.Is(err, gitstate.ErrNotFound) {
			continue // exists (or cannot be read): not a free attempt
		}
		if collected, err := e.Store.Collected(id); err != nil || collected {
			continue
		}
		args := "--branch " + shellWord(j.Branch)
		if j.Task != j.Branch {
			args += " --task " + shellWord(j.Task)
		}
		if j.Target != e.Config.Target {
			args += " --target " + shellWord(j.Target)
		}
		return fmt.Sprintf("it ended done; to run stage %s again, enqueue attempt %d: orch-hooks enqueue %s --stage %s --attempt %d",
			j.Stage, a, args, shellWord(j.Stage), a)
	}
	return ""
}
