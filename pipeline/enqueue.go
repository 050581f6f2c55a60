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
			return nil, false, fmt.Errorf("%w: %s defines no stages; add a [[stages]] table (see orch.toml.example) or run orch-hooks init", ErrUnknownStage, e.configName())
		}
		r.Stage = e.Config.Stages[0].Name
	}
	if err := gitstate.ValidateBranch(r.Branch); err != nil {
		return nil, false, err
	}
	if err := gitstate.ValidateTask(r.Task); err != nil {
		return nil, false, err
	}
	if err := gitstate.ValidateBranch(r.Target); err != nil {
		return nil, false, fmt.Errorf("target: %w", err)
	}
	if err := gitstate.ValidateStage(r.Stage); err != nil {
		return nil, false, err
	}
	if r.Attempt < 1 {
		return nil, false, fmt.Errorf("%w: attempt %d; attempts count from 1", gitstate.ErrBadName, r.Attempt)
	}
	if _, ok := e.Config.Stage(r.Stage); !ok {
		return nil, false, fmt.Errorf("%w %q: %s defines %s", ErrUnknownStage, r.Stage, e.configName(), stageList(e.Config))
	}
	if r.Branch == r.Target {
		return nil, false, fmt.Errorf("%w: branch %q is the target itself; give the job a branch of its own", gitstate.ErrBadName, r.Branch)
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
	return e.Store.Create(j)
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
