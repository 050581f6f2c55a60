package gitstate

import (
	"time"

	"github.com/orch-hooks/orch-hooks/procid"
)

// BootTime reads the time since this machine booted on a clock that
// setting the wall clock (by hand, NTP, a VM restored from a snapshot)
// does not move: CLOCK_BOOTTIME on Linux, which counts suspend;
// CLOCK_MONOTONIC on macOS, which counts sleep too, and on FreeBSD, which
// may not (an age read across a suspend is then short: a job is reaped
// later, never sooner). It is the host's clock: a time namespace's offset
// (procid.BootOffset) is taken off, so readings made inside and outside
// one compare. Two readings compare only on the same boot (procid.BootID).
// ok is false when the clock or the offset cannot be read; callers then
// fall back to the wall clock.
func BootTime() (d time.Duration, ok bool) {
	t, err := bootClock()
	if err != nil {
		return 0, false
	}
	off, err := procid.BootOffset()
	if err != nil {
		return 0, false
	}
	return t - off, true
}
