package hooks

import (
	"time"

	"golang.org/x/sys/unix"
)

// procUptime is the clock of /proc/uptime (CLOCK_BOOTTIME), which the hook
// script reads to skip a pass that is not due.
func procUptime() (time.Duration, bool) {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
