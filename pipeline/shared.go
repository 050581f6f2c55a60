package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotelease"
)

// Shared is what an Env needs in remote mode: the shared queue, the shared
// merge leases, and how often a runner beats.
//
// A shared job runs on the machine that claimed it as a local job of the
// same id (the local record carries the run, SharedRun), through the
// local launcher, monitor, adoption and reaper. What differs: the monitor
// beats the shared record every Heartbeat and stops the job when it loses
// it; every finalize step is fenced by a beat; the terminal status, the
// next stage's job and the job's branch reach the remote in one atomic
// Settle; the local advance is not made (the next stage is queued on the
// remote, for any machine).
type Shared struct {
	Queue     *remotejob.Queue
	Leases    *remotelease.Manager
	Heartbeat time.Duration
}

// SharedReport is what one SharedPass did.
type SharedReport struct {
	// Claimed are the shared jobs this machine claimed and queued
	// locally, to be started by the local dispatch.
	Claimed []string
	// Expired are the running shared jobs this machine judged.
	Expired []remotejob.Expiry
	// Settled are local ends this machine pushed late (its monitor could
	// not reach the remote, or died between its local claim and Settle).
	Settled []string
	// Errors are per-job failures; the pass went on past each.
	Errors []error
}

// SharedPass is remote mode's part of dispatch, watch and reap: one Sync;
// Expire; settle repair of this machine's local ends; then claims queued
// shared jobs, oldest first, while this machine runs fewer than capacity
// jobs, each becoming a local queued job that the caller's dispatch
// starts. Nothing is claimed when capacity is 0 (reap).
func (e *Env) SharedPass(ctx context.Context, capacity int) (SharedReport, error) {
	return SharedReport{}, errors.New("pipeline: SharedPass not built yet")
}
