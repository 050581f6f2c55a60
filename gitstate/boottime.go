package gitstate

import (
	"time"

	"golang.org/x/sys/unix"
)

// BootTime reads CLOCK_BOOTTIME: the time since this machine booted,
// suspend included, which setting the wall clock (by hand, NTP, a VM
// restored from a snapshot) does not move. Two readings compare only on
// the same boot (procid.BootID) and in the same time namespace. ok is false
// when the clock cannot be read; callers then fall back to the wall clock.
func BootTime() (d time.Duration, ok bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
