package gitstate

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/procid"
)

// BootTime reads CLOCK_BOOTTIME: the time since this machine booted,
// suspend included, which setting the wall clock (by hand, NTP, a VM
// restored from a snapshot) does not move. It is the host's clock: a time
// namespace's offset (procid.BootOffset) is taken off, so readings made
// inside and outside one compare. Two readings compare only on the same
// boot (procid.BootID). ok is false when the clock or the offset cannot be
// read; callers then fall back to the wall clock.
func BootTime() (d time.Duration, ok bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, false
	}
	off, err := procid.BootOffset()
	if err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()) - off, true
}
