package procid

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// kinfoFixture lays out one kinfo_proc as the kernel would, field by field
// at the offsets the headers give (sys/sysctl.h and sys/proc.h of macOS;
// sys/user.h of FreeBSD, KINFO_PROC_SIZE 1088 on amd64), with every other
// byte 0xA5 so that a decoder reading a neighbouring field gets garbage.
type kinfoFixture struct {
	pid, ppid, pgid int32
	sec, usec       int64
	flag            int64
	stat            byte
	jid             int32
}

func (f kinfoFixture) bytes(l kinfoLayout) []byte {
	b := make([]byte, l.size)
	for i := range b {
		b[i] = 0xA5
	}
	le := binary.LittleEndian
	if l.sizeField >= 0 {
		le.PutUint32(b[l.sizeField:], uint32(l.size))
	}
	le.PutUint32(b[l.pid:], uint32(f.pid))
	le.PutUint32(b[l.ppid:], uint32(f.ppid))
	le.PutUint32(b[l.pgid:], uint32(f.pgid))
	le.PutUint64(b[l.startSec:], uint64(f.sec))
	if l.usec64 {
		le.PutUint64(b[l.startUsec:], uint64(f.usec))
	} else {
		le.PutUint32(b[l.startUsec:], uint32(f.usec))
		le.PutUint32(b[l.startUsec+4:], 0) // padding of the 16-byte timeval
	}
	if l.flag64 {
		le.PutUint64(b[l.flag:], uint64(f.flag))
	} else {
		le.PutUint32(b[l.flag:], uint32(f.flag))
	}
	b[l.stat] = f.stat
	if l.jid >= 0 {
		le.PutUint32(b[l.jid:], uint32(f.jid))
	}
	return b
}

// The fixtures' offsets, written out from the headers rather than taken
// from the layout tables the decoder uses: a table that drifts from the
// header fails here (and, for macOS, in the darwin build, which checks the
// table against x/sys's KinfoProc).
func TestKinfoLayoutsMatchHeaders(t *testing.T) {
	// FreeBSD sys/user.h on LP64: int ki_structsize, int ki_layout, 8
	// pointers (8..72), then pid_t ki_pid, ki_ppid, ki_pgid, ki_tpgid,
	// ki_sid, ki_tsid (72..96), short ki_jobc, short, uint32 ki_tdev
	// (..104), 4 × sigset_t of 16 bytes (..168), 5 × uid/gid (..188),
	// short ki_ngroups, short (..192), gid_t ki_groups[16] (..256),
	// vm_size_t ki_size and 5 × segsz_t (..304), 2 × u_short (..308),
	// fixpt_t ki_pctcpu and 4 × u_int (..328), u_int64_t ki_runtime
	// (..336), struct timeval ki_start (336), ki_childtime (352), long
	// ki_flag (368), long ki_kiflag (376), int ki_traceflag (384), char
	// ki_stat (388), 5 more chars (..394), the strings ki_tdname[17],
	// ki_wmesg[9], ki_login[18], ki_lockname[9], ki_comm[20],
	// ki_emul[17], ki_loginclass[18] and ki_sparestrings[50] (..552),
	// int ki_spareints[7], ki_flag2, ki_fibnum, ki_cr_flags (..592), int
	// ki_jid (592).
	fb := kinfoLayout{os: "freebsd", size: 1088, sizeField: 0, pid: 72, ppid: 76, pgid: 80,
		startSec: 336, startUsec: 344, usec64: true, flag: 368, flag64: true, stat: 388, jid: 592}
	// macOS sys/proc.h struct extern_proc (LP64): union p_un whose
	// struct timeval p_starttime (long tv_sec, int tv_usec, padded to 16)
	// is at 0, struct vmspace *p_vmspace (16), struct sigacts *p_sigacts
	// (24), int p_flag (32), char p_stat (36), pid_t p_pid (40); the
	// struct is 296 bytes, and struct eproc follows with e_ppid 264 bytes
	// in (its e_paddr, e_sess, struct _pcred, struct _ucred and struct
	// vmspace come first), e_pgid after it; sizeof(struct kinfo_proc) is
	// 648.
	dw := kinfoLayout{os: "darwin", size: 648, sizeField: -1, pid: 40, ppid: 296 + 264, pgid: 296 + 268,
		startSec: 0, startUsec: 8, usec64: false, flag: 32, flag64: false, stat: 36, jid: -1}
	allow := cmp.AllowUnexported(kinfoLayout{})
	if d := cmp.Diff(fb, freebsdKinfo, allow); d != "" {
		t.Errorf("freebsdKinfo differs from sys/user.h (-header +table):\n%s", d)
	}
	if d := cmp.Diff(dw, darwinKinfo, allow); d != "" {
		t.Errorf("darwinKinfo differs from sys/sysctl.h (-header +table):\n%s", d)
	}
}

func TestDecodeKinfo(t *testing.T) {
	for _, l := range []kinfoLayout{darwinKinfo, freebsdKinfo} {
		t.Run(l.os, func(t *testing.T) {
			running := kinfoFixture{pid: 4242, ppid: 4100, pgid: 4200, sec: 1764633600, usec: 123456, flag: 0x4000 | 0x4, stat: bsdSRUN, jid: 3}
			k, err := decodeKinfo(running.bytes(l), l, 4242)
			if err != nil {
				t.Fatal(err)
			}
			want := kinfo{PID: 4242, PPID: 4100, PGID: 4200, StartSec: 1764633600, StartUsec: 123456, Flag: 0x4004, Stat: bsdSRUN}
			if l.jid >= 0 {
				want.JID = 3 // macOS has no jails: its fixture's jid is not written
			}
			if d := cmp.Diff(want, k); d != "" {
				t.Fatalf("decoded (-want +got):\n%s", d)
			}
			// Since the boot 1764600000 s after the epoch: µs of uptime.
			st := k.stat(1764600000 * 1e6)
			if d := cmp.Diff(Stat{State: 'R', PPID: 4100, PGID: 4200, StartTime: 33600*1e6 + 123456}, st); d != "" {
				t.Errorf("stat (-want +got):\n%s", d)
			}

			// A zombie is state Z; a process that has not called exec
			// (no P_EXEC) is a forked subshell.
			zombie := running
			zombie.stat, zombie.flag = bsdSZOMB, 0x4
			k, err = decodeKinfo(zombie.bytes(l), l, 4242)
			if err != nil {
				t.Fatal(err)
			}
			if st := k.stat(0); st.State != 'Z' || st.Flags&PFForkNoExec == 0 {
				t.Errorf("zombie, forked without exec: %+v, want state Z and PFForkNoExec", st)
			}
			for _, s := range []byte{bsdSIDL, bsdSSLP, bsdSSTOP} {
				k.Stat = s
				if st := k.stat(0); st.State == 'Z' {
					t.Errorf("S-state %d decoded as a zombie", s)
				}
			}

			// One more microsecond is another process: start times
			// compare exactly.
			later := running
			later.usec++
			k2, _ := decodeKinfo(later.bytes(l), l, 4242)
			if k2.stat(0).StartTime == (kinfo{StartSec: running.sec, StartUsec: running.usec}).stat(0).StartTime {
				t.Error("start times 1 µs apart decode equal")
			}
		})
	}
}

func TestDecodeKinfoRefuses(t *testing.T) {
	ok := kinfoFixture{pid: 7, ppid: 1, pgid: 7, sec: 1764633600, usec: 1, flag: 0x4000, stat: bsdSRUN}
	for _, l := range []kinfoLayout{darwinKinfo, freebsdKinfo} {
		good := ok.bytes(l)
		// macOS answers an empty buffer for a pid no process has.
		if _, err := decodeKinfo(nil, l, 7); !errors.Is(err, ErrNoProcess) {
			t.Errorf("%s: empty answer: %v, want ErrNoProcess", l.os, err)
		}
		for name, c := range map[string]struct {
			b    []byte
			pid  int
			want string
		}{
			"short":       {good[:l.size-8], 7, "want " + strconv.Itoa(l.size)},
			"long":        {append(append([]byte{}, good...), 0, 0, 0, 0, 0, 0, 0, 0), 7, "want " + strconv.Itoa(l.size)},
			"another pid": {good, 8, "describes pid 7"},
			"bad usec":    {kinfoFixture{pid: 7, sec: 1, usec: 1e6}.bytes(l), 7, "malformed start time"},
		} {
			if _, err := decodeKinfo(c.b, l, c.pid); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s, %s: %v, want an error saying %q", l.os, name, err, c.want)
			}
		}
	}
	// FreeBSD's own size field must agree: another layout version is
	// refused rather than read at the wrong offsets.
	b := ok.bytes(freebsdKinfo)
	binary.LittleEndian.PutUint32(b, 1096)
	if _, err := decodeKinfo(b, freebsdKinfo, 7); err == nil || !strings.Contains(err.Error(), "says it is 1096 bytes") {
		t.Errorf("ki_structsize 1096: %v, want refused", err)
	}
}

func TestDecodeKinfoList(t *testing.T) {
	for _, l := range []kinfoLayout{darwinKinfo, freebsdKinfo} {
		var b []byte
		for _, f := range []kinfoFixture{
			{pid: 100, pgid: 100, sec: 1, stat: bsdSRUN},
			{pid: 101, pgid: 100, sec: 1, stat: bsdSZOMB}, // a zombie counts for nothing
			{pid: 102, pgid: 100, sec: 1, stat: bsdSSLP},
			{pid: 200, pgid: 200, sec: 1, stat: bsdSZOMB},
			{pid: 300, pgid: 300, sec: 1, stat: bsdSSTOP},
		} {
			b = append(b, f.bytes(l)...)
		}
		ks, err := decodeKinfoList(b, l)
		if err != nil {
			t.Fatalf("%s: %v", l.os, err)
		}
		if d := cmp.Diff(map[int]int{100: 2, 300: 1}, groupCounts(ks)); d != "" {
			t.Errorf("%s: live members per group (-want +got):\n%s", l.os, d)
		}
		if _, err := decodeKinfoList(b[:len(b)-1], l); err == nil {
			t.Errorf("%s: a list cut short decoded", l.os)
		}
		if ks, err := decodeKinfoList(nil, l); err != nil || len(ks) != 0 {
			t.Errorf("%s: empty list: %v, %v", l.os, ks, err)
		}
	}
}

// kern.boottime is a struct timeval: macOS's tv_usec is 32 bits followed by
// padding, FreeBSD's 64.
func TestDecodeTimeval(t *testing.T) {
	le := binary.LittleEndian
	darwin := make([]byte, 16)
	le.PutUint64(darwin, 1764600000)
	le.PutUint32(darwin[8:], 250000)
	le.PutUint32(darwin[12:], 0xA5A5A5A5) // padding: never read
	if us, err := decodeTimeval(darwin, false); err != nil || us != 1764600000*1e6+250000 {
		t.Errorf("darwin boottime: %d, %v", us, err)
	}
	freebsd := make([]byte, 16)
	le.PutUint64(freebsd, 1764600000)
	le.PutUint64(freebsd[8:], 999999)
	if us, err := decodeTimeval(freebsd, true); err != nil || us != 1764600000*1e6+999999 {
		t.Errorf("freebsd boottime: %d, %v", us, err)
	}
	for name, b := range map[string][]byte{
		"short":     freebsd[:8],
		"zero":      make([]byte, 16),
		"usec 1e6":  append(le.AppendUint64(nil, 1), le.AppendUint64(nil, 1e6)...),
		"negative":  append(le.AppendUint64(nil, 1<<63), le.AppendUint64(nil, 0)...),
		"too long":  append(append([]byte{}, freebsd...), 0),
		"neg usec":  append(le.AppendUint64(nil, 1), le.AppendUint64(nil, 1<<63)...),
		"no record": nil,
	} {
		if us, err := decodeTimeval(b, true); err == nil {
			t.Errorf("%s: decoded as %d, want an error", name, us)
		}
	}
}
