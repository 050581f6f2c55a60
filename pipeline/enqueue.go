// Package pipeline moves jobs through the stages of orch.toml: enqueue,
// cancel, and (with the launcher) run, finalize and advance.
package pipeline

import (
	"errors"
	"fmt"
	"strings"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
)

// ErrUnknownStage is returned (wrapped) for a stage orch.toml does not define.
var ErrUnknownStage = errors.New("unknown stage")

// Env is what every pipeline operation works on.
type Env struct {
	Repo   *gitstate.Repo
	Store  *gitstate.Store
	Config *config.Config
	// Adopter, when set, starts a new monitor for a running job whose
	// monitor died while its command lived (StartAdopter); dispatch and
	// the reaper's pass call it. Nil: such a job waits for its command
	// with no one to record the outcome, and ends lost, as before.
	Adopter MonitorStarter
	// Shared is remote mode's shared queue (docs/DISTRIBUTED.md); nil in
	// local mode.
	Shared *Shared
}

// Request names a job to enqueue. Task defaults to Branch, Stage to the
// first stage of orch.toml, Attempt to 1, Target to the config's target.
type Request struct {
	Task, Stage, Branch, Target string
	Attempt                     int
}

// Enqueue creates the queued job for r, or finds it: the id is derived from
// (task, stage, attempt), so enqueuing the same request twice returns the
// same job with created=false and writes nothing.
func (e *Env) Enqueue(r Request) (j *gitstate.Job, created bool, err error) {
	r, err = e.request(r)
	if err != nil {
		return nil, false, err
	}
	j = &gitstate.Job{
		ID:      gitstate.JobID(r.Task, r.Stage, r.Attempt),
		Task:    r.Task,
		Stage:   r.Stage,
		Branch:  r.Branch,
		Target:  r.Target,
		Attempt: r.Attempt,
		Status:  gitstate.Queued,
	}
	j, created, err = e.Store.Create(j)
	if errors.Is(err, gitstate.ErrCollected) {
		return nil, false, e.collectedError(r)
	}
	return j, created, err
}

// request fills r's defaults and checks every name in it against
// orch.toml: what Enqueue (and EnqueueShared) creates a job from.
func (e *Env) request(r Request) (Request, error) {
	if r.Task == "" {
		r.Task = r.Branch
	}
	if r.Attempt == 0 {
		r.Attempt = 1
	}
	if r.Target == "" {
		r.Target = e.Config.Target
	}
	if r.Stage == "" {
		if len(e.Config.Stages) == 0 {
			return r, fmt.Errorf("%w: %s defines no stages; add a [[stages]] table (see orch.toml.example) or run orch-hooks init", ErrUnknownStage, e.configName())
		}
		r.Stage = e.Config.Stages[0].Name
	}
	if err := gitstate.ValidateBranch(r.Branch); err != nil {
		return r, err
	}
	if err := gitstate.ValidateTask(r.Task); err != nil {
		return r, err
	}
	if err := gitstate.ValidateBranch(r.Target); err != nil {
		return r, fmt.Errorf("target: %w", err)
	}
	if err := gitstate.ValidateStage(r.Stage); err != nil {
		return r, err
	}
	if r.Attempt < 1 {
		return r, fmt.Errorf("%w: attempt %d; attempts count from 1", gitstate.ErrBadName, r.Attempt)
	}
	if _, ok := e.Config.Stage(r.Stage); !ok {
		return r, fmt.Errorf("%w %q: %s defines %s", ErrUnknownStage, r.Stage, e.configName(), stageList(e.Config))
	}
	if r.Branch == r.Target {
		return r, fmt.Errorf("%w: branch %q is the target itself; give the job a branch of its own", gitstate.ErrBadName, r.Branch)
	}
	return r, nil
}

// maxAttemptProbe bounds the search for an attempt whose id gc has not
// collected (each probe is one lookup by name).
const maxAttemptProbe = 1000

// nextFreeAttempt is the first attempt from r.Attempt on whose job id has
// no tombstone (it may exist: then it is that job), or 0 if none within
// maxAttemptProbe.
func (e *Env) nextFreeAttempt(r Request) (int, error) {
	for a := r.Attempt; a < r.Attempt+maxAttemptProbe; a++ {
		collected, err := e.Store.Collected(gitstate.JobID(r.Task, r.Stage, a))
		if err != nil {
			return 0, err
		}
		if !collected {
			return a, nil
		}
	}
	return 0, nil
}

// CollectedError refuses to enqueue a job id that already ran and that gc
// collected: a job id runs at most once. It is a definite "no" (it wraps
// ErrWrongStatus as well as gitstate.ErrCollected) and names the attempt to
// enqueue instead.
type CollectedError struct {
	ID   string
	Path string // the tombstone
	// Free is the first later attempt whose id is not collected, 0 if the
	// search gave up.
	Free int
	// Hint is the command that enqueues attempt Free, for the message.
	Hint string
}

func (e *CollectedError) Error() string {
	msg := fmt.Sprintf("job %s already ran and was collected by gc (tombstone %s); a job id runs at most once", e.ID, e.Path)
	if e.Hint != "" {
		msg += "; to run it again, " + e.Hint
	}
	return msg
}

// Is makes a CollectedError both gitstate.ErrCollected and ErrWrongStatus.
func (e *CollectedError) Is(target error) bool {
	return target == gitstate.ErrCollected || target == ErrWrongStatus
}

func (e *Env) collectedError(r Request) error {
	id := gitstate.JobID(r.Task, r.Stage, r.Attempt)
	ce := &CollectedError{ID: id, Path: e.Store.TombstonePath(id)}
	next := r
	next.Attempt++
	free, err := e.nextFreeAttempt(next)
	if err != nil {
		return fmt.Errorf("%w (and finding a free attempt: %v)", ce, err)
	}
	ce.Free = free
	if free > 0 {
		args := "--branch " + shellWord(r.Branch)
		if r.Task != r.Branch {
			args += " --task " + shellWord(r.Task)
		}
		if r.Target != e.Config.Target {
			args += " --target " + shellWord(r.Target)
		}
		ce.Hint = fmt.Sprintf("enqueue attempt %d: orch-hooks enqueue %s --stage %s --attempt %d", free, args, shellWord(r.Stage), free)
	}
	return ce
}

// shellWord quotes s for a command line shown to a person, only if needed.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:@+=,", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (e *Env) configName() string {
	if e.Config.Path == "" {
		return "the default configuration (no orch.toml)"
	}
	return e.Config.Path
}

func stageList(c *config.Config) string {
	if len(c.Stages) == 0 {
		return "no stages"
	}
	return "stages " + strings.Join(c.StageNames(), ", ")
}
