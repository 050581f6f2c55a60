package procid

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// readStat asks the kernel for the process's kinfo_proc. FreeBSD reports
// ki_start as the boot time plus the process's start on the uptime clock,
// and moves the boot time when the wall clock is set; the boot time is
// taken off again (read before and after, and the read retried if it
// moved), so the start time is microseconds since boot, which setting the
// clock does not change.
func readStat(pid int) (Stat, error) {
	for range 3 {
		boot, err := bootTimeUsec()
		if err != nil {
			return Stat{}, err
		}
		b, err := unix.SysctlRaw("kern.proc.pid", pid)
		if errors.Is(err, unix.ESRCH) {
			return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		if err != nil {
			return Stat{}, fmt.Errorf("sysctl kern.proc.pid.%d: %w", pid, err)
		}
		k, err := decodeKinfo(b, freebsdKinfo, pid)
		if err != nil {
			return Stat{}, err
		}
		again, err := bootTimeUsec()
		if err != nil {
			return Stat{}, err
		}
		if again != boot {
			continue
		}
		return k.stat(boot), nil
	}
	return Stat{}, fmt.Errorf("pid %d: kern.boottime kept moving (the clock is being set) while the start time was read", pid)
}

func bootTimeUsec() (int64, error) {
	b, err := unix.SysctlRaw("kern.boottime")
	if err != nil {
		return 0, fmt.Errorf("sysctl kern.boottime: %w", err)
	}
	return decodeTimeval(b, true)
}

// readBootID is kern.boottime in microseconds ("boottime:<µs>"): FreeBSD
// has no boot UUID. Setting the clock moves it, and the boot then looks
// like another: its processes are judged by tier 3 only, never wrongly
// dead.
func readBootID() (string, error) {
	us, err := bootTimeUsec()
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return "boottime:" + strconv.FormatInt(us, 10), nil
}

const procListName = "kern.proc.proc"

var kinfoLayoutHere = freebsdKinfo

// readPidNS is this process's jail id plus one (1 outside any jail). Jails
// share the host's pid numbers, but a jailed process sees only its jail's
// processes: a host process would look gone to a reaper inside a jail. So
// an identity names the jail it was read in, and a judge in another jail
// (or outside, for a jailed one) treats it as foreign, as Linux treats
// another pid namespace. Never 0, which means "recorded before
// namespaces" and is judged as the reader's own.
func readPidNS() (uint64, error) {
	pid := os.Getpid()
	b, err := unix.SysctlRaw("kern.proc.pid", pid)
	if err != nil {
		return 0, fmt.Errorf("jail of this process: sysctl kern.proc.pid.%d: %w", pid, err)
	}
	k, err := decodeKinfo(b, freebsdKinfo, pid)
	if err != nil {
		return 0, fmt.Errorf("jail of this process: %w", err)
	}
	if k.JID < 0 {
		return 0, fmt.Errorf("jail of this process: jail id %d", k.JID)
	}
	return uint64(k.JID) + 1, nil
}
