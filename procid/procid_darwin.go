package procid

import (
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The offsets darwinKinfo decodes by are those of x/sys's KinfoProc,
// generated from the SDK's sys/sysctl.h: a mismatch fails `GOOS=darwin go
// build` (one of each pair of differences is negative, which overflows
// uintptr), so CI's cross build checks the layout the Linux tests decode.
const (
	darwinSize  = unsafe.Sizeof(unix.KinfoProc{})
	darwinProc  = unsafe.Offsetof(unix.KinfoProc{}.Proc)
	darwinStart = darwinProc + unsafe.Offsetof(unix.ExternProc{}.P_starttime)
	darwinUsec  = darwinStart + unsafe.Offsetof(unix.Timeval{}.Usec)
	darwinFlag  = darwinProc + unsafe.Offsetof(unix.ExternProc{}.P_flag)
	darwinStat  = darwinProc + unsafe.Offsetof(unix.ExternProc{}.P_stat)
	darwinPID   = darwinProc + unsafe.Offsetof(unix.ExternProc{}.P_pid)
	darwinPPID  = unsafe.Offsetof(unix.KinfoProc{}.Eproc) + unsafe.Offsetof(unix.Eproc{}.Ppid)
	darwinPGID  = unsafe.Offsetof(unix.KinfoProc{}.Eproc) + unsafe.Offsetof(unix.Eproc{}.Pgid)
)

var (
	_ [darwinSize - darwinKinfoSize]byte
	_ [darwinKinfoSize - darwinSize]byte
	_ [darwinStart - darwinOffStart]byte
	_ [darwinOffStart - darwinStart]byte
	_ [darwinUsec - darwinOffUsec]byte
	_ [darwinOffUsec - darwinUsec]byte
	_ [darwinFlag - darwinOffFlag]byte
	_ [darwinOffFlag - darwinFlag]byte
	_ [darwinStat - darwinOffStat]byte
	_ [darwinOffStat - darwinStat]byte
	_ [darwinPID - darwinOffPID]byte
	_ [darwinOffPID - darwinPID]byte
	_ [darwinPPID - darwinOffPPID]byte
	_ [darwinOffPPID - darwinPPID]byte
	_ [darwinPGID - darwinOffPGID]byte
	_ [darwinOffPGID - darwinPGID]byte
)

// readStat asks the kernel for the process's kinfo_proc. The start time is
// p_starttime, the wall-clock time of the fork, which the kernel stores
// once and never adjusts: microseconds since the epoch, compared only for
// equality, on the same boot.
func readStat(pid int) (Stat, error) {
	b, err := unix.SysctlRaw("kern.proc.pid", pid)
	if errors.Is(err, unix.ESRCH) {
		return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	if err != nil {
		return Stat{}, fmt.Errorf("sysctl kern.proc.pid.%d: %w", pid, err)
	}
	k, err := decodeKinfo(b, darwinKinfo, pid)
	if err != nil {
		return Stat{}, err
	}
	return k.stat(0), nil
}

// readBootID is kern.bootsessionuuid, a UUID made at each boot; on a
// kernel without it, kern.boottime in microseconds ("boottime:<µs>"),
// which setting the clock can move — the boot then looks like another,
// and its processes are judged by tier 3 only: never wrongly dead.
func readBootID() (string, error) {
	if s, err := unix.Sysctl("kern.bootsessionuuid"); err == nil && s != "" {
		return s, nil
	}
	b, err := unix.SysctlRaw("kern.boottime")
	if err != nil {
		return "", fmt.Errorf("boot id: sysctl kern.boottime: %w", err)
	}
	us, err := decodeTimeval(b, false)
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return "boottime:" + strconv.FormatInt(us, 10), nil
}

const procListName = "kern.proc.all"

var kinfoLayoutHere = darwinKinfo

// readPidNS: macOS has no pid namespaces; a pid means the same process to
// every reader on the machine, and an identity records no namespace (0,
// judged as the reader's own).
func readPidNS() (uint64, error) { return 0, nil }
