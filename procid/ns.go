package procid

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrForeignProc is why an identity is neither recorded nor judged: the
// /proc this process sees is mounted for another pid namespace (an
// ancestor's, typically after `unshare --pid --fork` without
// --mount-proc), so the pids it shows are not this namespace's and the
// process at /proc/<pid> is some other process than ours.
var ErrForeignProc = errors.New("/proc is not mounted for this process's pid namespace")

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

var (
	nsOnce sync.Once
	nsIno  uint64
	nsErr  error

	offOnce sync.Once
	offTick int64
	offErr  error
)

// PidNS returns the inode of this process's pid namespace, the namespace in
// which every pid it reads from /proc is meant. It fails with
// ErrForeignProc, naming the fix, when /proc is not this process's own:
// /proc/self is not this process's pid, or /proc shows it in more than one
// namespace (NSpid), as a /proc of an ancestor namespace does.
func PidNS() (uint64, error) {
	nsOnce.Do(func() { nsIno, nsErr = readPidNS() })
	return nsIno, nsErr
}

// BootOffset is how far this process's time namespace sets CLOCK_BOOTTIME
// (and /proc/uptime, and the start times in /proc) ahead of the host's, to
// whole clock ticks: zero outside a time namespace. A boot-time stamp meant
// to be compared across namespaces is this process's clock minus it.
func BootOffset() (time.Duration, error) {
	t, err := bootOffset()
	return time.Duration(t) * (time.Second / clockTicks), err
}

// bootOffset returns this process's time namespace boot-time offset in
// clock ticks, which /proc adds to the start times it shows; zero on a
// kernel without time namespaces. An offset that is not a whole number of
// ticks (10 ms) can leave a start time read inside and outside the
// namespace one tick apart; `unshare --boottime` sets whole seconds.
func bootOffset() (int64, error) {
	offOnce.Do(func() { offTick, offErr = readBootOffset() })
	return offTick, offErr
}

// parseBootOffset reads the "boottime <s> <ns>" line of timens_offsets.
func parseBootOffset(b []byte) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || (f[0] != "boottime" && f[0] != "7") { // 7 is CLOCK_BOOTTIME, as older kernels print it
			continue
		}
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		nsec, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("time namespace offsets: malformed line %q", line)
		}
		ns := sec*1e9 + nsec
		const tick = 1e9 / clockTicks
		t := ns / tick
		if ns%tick < 0 {
			t-- // floor, as the kernel's tick conversion of the shifted time
		}
		return t, nil
	}
	return 0, fmt.Errorf("time namespace offsets: no boottime line in %q", b)
}
