package procid

import (
	"encoding/binary"
	"fmt"
)

// This file decodes what the BSD kernels (macOS, FreeBSD) answer for
// sysctl kern.proc.pid.<pid> — a struct kinfo_proc — and kern.boottime —
// a struct timeval. It has no build tag so that Linux CI tests it on byte
// fixtures laid out as the headers say; the *_darwin.go and *_freebsd.go
// files only make the system calls, and the darwin one checks at compile
// time that these offsets are those of golang.org/x/sys/unix.KinfoProc,
// which is generated from the SDK's headers.

// kinfoLayout is where the fields this package needs sit in one kernel's
// struct kinfo_proc on 64-bit little-endian machines (amd64, arm64).
type kinfoLayout struct {
	os   string
	size int // sizeof(struct kinfo_proc)
	// sizeField, when not negative, is the offset of an int holding the
	// structure's own size (FreeBSD's ki_structsize), checked against size.
	sizeField int
	pid       int // int32
	ppid      int // int32
	pgid      int // int32
	startSec  int // int64: struct timeval's tv_sec
	startUsec int // tv_usec
	usec64    bool
	flag      int // p_flag: int32 on darwin, long on FreeBSD
	flag64    bool
	stat      int // char: S* process status
	jid       int // int ki_jid, FreeBSD's jail id; -1 where there is none
}

// darwinKinfo is macOS's struct kinfo_proc (sys/sysctl.h) on arm64 and
// amd64: struct extern_proc kp_proc (sys/proc.h; 296 bytes: its p_un
// union starts with p_starttime, then p_vmspace, p_sigacts, int p_flag at
// 32, char p_stat at 36, pid_t p_pid at 40) followed by struct eproc
// kp_eproc (e_ppid at 264 into it, e_pgid after). tv_usec is a 32-bit
// suseconds_t.
var darwinKinfo = kinfoLayout{
	os: "darwin", size: darwinKinfoSize, sizeField: -1,
	pid: darwinOffPID, ppid: darwinOffPPID, pgid: darwinOffPGID,
	startSec: darwinOffStart, startUsec: darwinOffUsec, usec64: false,
	flag: darwinOffFlag, flag64: false, stat: darwinOffStat, jid: -1,
}

// The numbers of darwinKinfo, as constants for procid_darwin.go's
// compile-time check against x/sys.
const (
	darwinKinfoSize = 648
	darwinOffStart  = 0
	darwinOffUsec   = 8
	darwinOffFlag   = 32
	darwinOffStat   = 36
	darwinOffPID    = 40
	darwinOffPPID   = 296 + 264
	darwinOffPGID   = 296 + 268
)

// freebsdKinfo is FreeBSD's struct kinfo_proc (sys/user.h,
// KINFO_PROC_SIZE 1088 on amd64 and arm64): ki_structsize at 0, eight
// pointers, then ki_pid 72, ki_ppid 76, ki_pgid 80; ki_start (a timeval
// with a 64-bit tv_usec) at 336, long ki_flag at 368, char ki_stat at 388;
// int ki_jid at 592, after the string fields and the spare ints that new
// fields are carved from (so it has not moved since FreeBSD 7).
var freebsdKinfo = kinfoLayout{
	os: "freebsd", size: 1088, sizeField: 0,
	pid: 72, ppid: 76, pgid: 80,
	startSec: 336, startUsec: 344, usec64: true,
	flag: 368, flag64: true, stat: 388, jid: 592,
}

// The S* process states of sys/proc.h, the same numbers on both kernels.
const (
	bsdSIDL  = 1 // being created by fork
	bsdSRUN  = 2
	bsdSSLP  = 3
	bsdSSTOP = 4
	bsdSZOMB = 5 // exited, not yet waited for
)

// bsdPExec is P_EXEC of sys/proc.h (0x4000 in both xnu and FreeBSD):
// "process called exec". A child does not inherit it at fork, so its
// absence is Linux's PF_FORKNOEXEC.
const bsdPExec = 0x4000

// kinfo is one decoded kinfo_proc.
type kinfo struct {
	PID, PPID, PGID int
	StartSec        int64
	StartUsec       int64
	Flag            uint64
	Stat            byte
	JID             int // 0 outside a jail, and on macOS
}

// decodeKinfo decodes the answer to kern.proc.pid.<pid>. An empty answer
// is how macOS says there is no such process (FreeBSD fails with ESRCH
// instead); a short or odd-sized one, or one for another pid, is an error,
// never a guess.
func decodeKinfo(b []byte, l kinfoLayout, pid int) (kinfo, error) {
	if len(b) == 0 {
		return kinfo{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	if len(b) != l.size {
		return kinfo{}, fmt.Errorf("%s kinfo_proc of pid %d is %d bytes, want %d: a kernel this build does not know", l.os, pid, len(b), l.size)
	}
	le := binary.LittleEndian
	if l.sizeField >= 0 {
		if n := int(int32(le.Uint32(b[l.sizeField:]))); n != l.size {
			return kinfo{}, fmt.Errorf("%s kinfo_proc of pid %d says it is %d bytes, want %d: a kernel this build does not know", l.os, pid, n, l.size)
		}
	}
	k := kinfo{
		PID:      int(int32(le.Uint32(b[l.pid:]))),
		PPID:     int(int32(le.Uint32(b[l.ppid:]))),
		PGID:     int(int32(le.Uint32(b[l.pgid:]))),
		StartSec: int64(le.Uint64(b[l.startSec:])),
		Stat:     b[l.stat],
	}
	if l.usec64 {
		k.StartUsec = int64(le.Uint64(b[l.startUsec:]))
	} else {
		k.StartUsec = int64(int32(le.Uint32(b[l.startUsec:])))
	}
	if l.flag64 {
		k.Flag = le.Uint64(b[l.flag:])
	} else {
		k.Flag = uint64(le.Uint32(b[l.flag:]))
	}
	if l.jid >= 0 {
		k.JID = int(int32(le.Uint32(b[l.jid:])))
	}
	if k.PID != pid {
		return kinfo{}, fmt.Errorf("%s kinfo_proc asked for pid %d describes pid %d", l.os, pid, k.PID)
	}
	if k.StartUsec < 0 || k.StartUsec >= 1e6 || k.StartSec < 0 {
		return kinfo{}, fmt.Errorf("%s kinfo_proc of pid %d: malformed start time %d.%06d", l.os, pid, k.StartSec, k.StartUsec)
	}
	return k, nil
}

// stat maps a kinfo_proc onto the Linux-shaped Stat the rest of the package
// judges by. since is subtracted from the start time (microseconds); State
// is 'Z' for a zombie and 'R' otherwise (no other state matters here), and
// PFForkNoExec is set when the process has not called exec.
func (k kinfo) stat(since int64) Stat {
	st := Stat{State: 'R', PPID: k.PPID, PGID: k.PGID}
	if k.Stat == bsdSZOMB {
		st.State = 'Z'
	}
	if k.Flag&bsdPExec == 0 {
		st.Flags |= PFForkNoExec
	}
	st.StartTime = uint64(k.StartSec*1e6 + k.StartUsec - since)
	return st
}

// decodeTimeval decodes a 64-bit struct timeval (kern.boottime): tv_sec
// then tv_usec, 16 bytes on both kernels (macOS pads its 32-bit tv_usec).
// It returns microseconds since the epoch.
func decodeTimeval(b []byte, usec64 bool) (int64, error) {
	if len(b) != 16 {
		return 0, fmt.Errorf("kern.boottime is %d bytes, want a 16-byte struct timeval", len(b))
	}
	le := binary.LittleEndian
	sec := int64(le.Uint64(b))
	var usec int64
	if usec64 {
		usec = int64(le.Uint64(b[8:]))
	} else {
		usec = int64(int32(le.Uint32(b[8:])))
	}
	if sec <= 0 || usec < 0 || usec >= 1e6 {
		return 0, fmt.Errorf("kern.boottime: malformed struct timeval %d.%06d", sec, usec)
	}
	return sec*1e6 + usec, nil
}

// decodeKinfoList decodes the answer to a kern.proc listing (all
// processes, or a process group's): kinfo_procs back to back.
func decodeKinfoList(b []byte, l kinfoLayout) ([]kinfo, error) {
	if len(b)%l.size != 0 {
		return nil, fmt.Errorf("%s process list is %d bytes, not a whole number of %d-byte kinfo_procs: a kernel this build does not know", l.os, len(b), l.size)
	}
	ks := make([]kinfo, 0, len(b)/l.size)
	for ; len(b) > 0; b = b[l.size:] {
		pid := int(int32(binary.LittleEndian.Uint32(b[l.pid:])))
		k, err := decodeKinfo(b[:l.size], l, pid)
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	return ks, nil
}

// groupCounts counts the processes of each process group that are not
// zombies, as scanGroups does.
func groupCounts(ks []kinfo) map[int]int {
	m := map[int]int{}
	for _, k := range ks {
		if k.Stat != bsdSZOMB {
			m[k.PGID]++
		}
	}
	return m
}
