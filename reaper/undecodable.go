package reaper

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

// endUndecodable ends, failed, the running job whose record u could not be
// read, when that record is a regular file that does not decode: no monitor,
// cancel or later pass could ever write it, so the job would otherwise stay
// running for ever. Its bytes are kept aside and its processes, as far as
// the old record still names them, are stopped (a monitor that is alive
// cannot record an outcome into a record it cannot read). A record that
// cannot be read at all (FIFO, permission) is left alone and reported as
// before. It reports whether it took care of u.
func endUndecodable(ctx context.Context, env *pipeline.Env, opts Options, u *gitstate.UnreadableError, snap *Snapshot) bool {
	name := filepath.Base(u.Path)
	id := strings.TrimSuffix(name, ".toml")
	if id == name || gitstate.ValidateJobID(id) != nil || ctx.Err() != nil {
		return false
	}
	if opts.DryRun {
		return false // reported as unreadable; a dry run writes nothing
	}
	j, ended, err := env.Store.EndUndecodable(ctx, id, gitstate.Failed, gitstate.EndedByReaperUndecodable, "reaper: the record does not decode")
	if errors.Is(err, gitstate.ErrDecodable) {
		return false
	}
	if err != nil {
		snap.Errors = append(snap.Errors, PassError{Job: id, Path: u.Path, Message: err.Error()})
		return true
	}
	if !ended {
		return true // it had ended; the record is readable again
	}
	snap.Actions = append(snap.Actions, Action{Job: id, Tier: TierUndecodable, Outcome: fmt.Sprintf("%s (%s)", j.Status, j.Reason)})
	grace := opts.StopGrace
	if grace == 0 {
		grace = StopGraceDefault
	}
	if err := pipeline.StopGroups(j, grace); err != nil {
		snap.Errors = append(snap.Errors, PassError{Job: id, Message: "stop processes: " + err.Error()})
	}
	return true
}
