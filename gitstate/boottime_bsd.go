//go:build darwin || freebsd

package gitstate

import (
	"time"

	"golang.org/x/sys/unix"
)

func bootClock() (time.Duration, error) {
	var ts unix.Timespec
	err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano()), err
}
