// Package procid identifies processes on this machine in a way that survives
// pid reuse and namespaces: a process is (host, boot id, pid namespace, pid,
// start time), and a pid alone never says whether "our" process is still
// alive.
//
// A pid means something only in the pid namespace it was read in, so an
// identity records that namespace (the inode of /proc/self/ns/pid of the
// process that read it, whose /proc must be its own) and is judged only by
// a process in the same namespace; anywhere else it is foreign, Unknown,
// like a process on another host. The start time is normalised to the
// host's boot-time clock, so a time namespace (whose offset /proc applies
// to what its members read) does not change it.
package procid

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// Identity names one process for as long as the machine stays up. The start
// time is field 22 of /proc/<pid>/stat on Linux (clock ticks since boot,
// normalised to the host's clock: see StartTime of Stat), microseconds from
// the kinfo_proc on macOS and FreeBSD, so a pid recycled for another
// process yields a different Identity. PidNS is the pid namespace PID was
// read in (on FreeBSD its jail id plus one; nothing on macOS); zero in
// records written before it was recorded, which are judged as if they were
// of the judge's own namespace.
type Identity struct {
	Host      string `toml:"host,omitempty" json:"host,omitempty"`
	BootID    string `toml:"boot_id,omitempty" json:"boot_id,omitempty"`
	PidNS     uint64 `toml:"pid_ns,omitzero" json:"pid_ns,omitempty"`
	PID       int    `toml:"pid,omitzero" json:"pid"`
	StartTime uint64 `toml:"start_time,omitzero" json:"start_time,omitempty"`
}

// IsZero reports whether no process was recorded.
func (id Identity) IsZero() bool { return id.PID == 0 }

// String is for messages: "pid 42 on host".
func (id Identity) String() string {
	if id.IsZero() {
		return "no process"
	}
	return fmt.Sprintf("pid %d on %s", id.PID, id.Host)
}

// Liveness is the answer to "is this process still running?".
type Liveness int

const (
	// Unknown: the process belongs to another host, boot or pid namespace,
	// or this process's /proc is not its own, so it cannot tell here;
	// callers must not treat it as dead, nor signal it.
	Unknown Liveness = iota
	// Alive: a process with that pid and that start time exists and has not
	// exited.
	Alive
	// Dead: no such process on this boot — the pid is gone, is now held by a
	// process with a different start time, or is a zombie (exited, not yet
	// reaped by its parent).
	Dead
)

func (l Liveness) String() string {
	switch l {
	case Alive:
		return "alive"
	case Dead:
		return "dead"
	default:
		return "unknown"
	}
}

// Stat is what this package reads from /proc/<pid>/stat, or from the
// kinfo_proc on macOS and FreeBSD (State is then 'Z' or 'R').
type Stat struct {
	State byte // field 3: R, S, D, Z, T, ...
	PPID  int  // field 4
	PGID  int  // field 5
	// Flags is field 9, the kernel's PF_* flags of the process (see
	// PFForkNoExec).
	Flags uint32
	// StartTime is field 22, which /proc shows shifted by the reader's time
	// namespace boot-time offset; ReadStat takes that offset off again, so
	// this is ticks of the host's CLOCK_BOOTTIME wherever it was read.
	StartTime uint64
}

// ErrNoProcess is returned by ReadStat when no process has that pid.
var ErrNoProcess = errors.New("no such process")

// ReadStat reads what the kernel says of process pid: /proc/<pid>/stat on
// Linux, the kinfo_proc of sysctl kern.proc.pid.<pid> on macOS and FreeBSD
// (see kinfo.go for how that maps onto Stat).
func ReadStat(pid int) (Stat, error) {
	if pid <= 0 {
		return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	}
	return readStat(pid)
}

// readStatFile reads a /proc/<pid>/stat file with bare system calls (open,
// read, close) into one buffer: a reaper pass reads one per process it
// checks, and os.ReadFile's extra work (an fstat, the poller's bookkeeping,
// a growing buffer, a last read to see the end) doubled that cost.
func readStatFile(path string) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	for err == syscall.EINTR {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	// A stat line is some 300 bytes, at most about 1,100 (a 64-byte
	// command name and 50 numbers); a longer file is read on.
	b := make([]byte, 0, 1024)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := syscall.Read(fd, b[len(b):cap(b)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return b, nil
		}
		b = b[:len(b)+n]
		// /proc makes a stat file whole at its first read: a line read
		// whole, with room to spare, is all of it (one read call saved
		// per process checked).
		if len(b) < cap(b) && b[len(b)-1] == '\n' {
			return b, nil
		}
	}
}

// parseStat parses a stat line without splitting it into strings: field
// N after the command name is the (N-2)-th space-separated word.
func parseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := make([][]byte, 0, 20)
	for rest := b[i+1:]; len(f) < 20; {
		rest = bytes.TrimLeft(rest, " \t\n")
		if len(rest) == 0 {
			break
		}
		w := rest
		if j := bytes.IndexAny(rest, " \t\n"); j >= 0 {
			w, rest = rest[:j], rest[j:]
		} else {
			rest = nil
		}
		f = append(f, w)
	}
	// f[0] is field 3 (state), so field N is f[N-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat ppid %q: %w", f[1], err)
	}
	pgid, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat pgrp %q: %w", f[2], err)
	}
	flags, err := strconv.ParseUint(string(f[6]), 10, 32)
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat flags %q: %w", f[6], err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat starttime %q: %w", f[19], err)
	}
	return Stat{State: f[0][0], PPID: ppid, PGID: pgid, Flags: uint32(flags), StartTime: start}, nil
}

var (
	bootOnce sync.Once
	bootID   string
	bootErr  error
	hostOnce sync.Once
	hostName string
	hostErr  error
)

// BootID returns this boot's id: /proc/sys/kernel/random/boot_id on Linux,
// kern.bootsessionuuid on macOS, kern.boottime on FreeBSD.
func BootID() (string, error) {
	bootOnce.Do(func() { bootID, bootErr = readBootID() })
	return bootID, bootErr
}

// Host returns this machine's host name.
func Host() (string, error) {
	hostOnce.Do(func() {
		hostName, hostErr = os.Hostname()
		if hostErr != nil {
			hostErr = fmt.Errorf("host name: %w", hostErr)
		}
	})
	return hostName, hostErr
}

// Of returns the identity of the live process pid, a pid of this process's
// own pid namespace. It fails when this process's /proc is not its own (see
// ErrForeignProc) rather than record the identity of another process.
func Of(pid int) (Identity, error) {
	host, err := Host()
	if err != nil {
		return Identity{}, err
	}
	boot, err := BootID()
	if err != nil {
		return Identity{}, err
	}
	ns, err := PidNS()
	if err != nil {
		return Identity{}, err
	}
	st, err := ReadStat(pid)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Host: host, BootID: boot, PidNS: ns, PID: pid, StartTime: st.StartTime}, nil
}

// Self returns the identity of the calling process.
func Self() (Identity, error) { return Of(os.Getpid()) }

// Local reports whether id was recorded on this host and this boot: the
// same machine, whatever its pid namespace. Judgeable says whether its
// liveness can be judged here.
func Local(id Identity) bool {
	host, err1 := Host()
	boot, err2 := BootID()
	return err1 == nil && err2 == nil && id.Host == host && id.BootID == boot
}

// Judgeable reports whether this process can judge id's liveness: id was
// recorded on this host and boot, in this process's pid namespace (or
// before namespaces were recorded), and this process's /proc is its own.
// A foreign identity is not an error; a /proc that is not this process's
// own is, since then nothing can be judged here.
func Judgeable(id Identity) (bool, error) {
	if id.IsZero() || !Local(id) {
		return false, nil
	}
	ns, err := PidNS()
	if err != nil {
		return false, err
	}
	return id.PidNS == 0 || id.PidNS == ns, nil
}

// Check tells whether the process id is still running. A process on
// another host, boot or pid namespace is Unknown; so is any process when
// this process's /proc is not its own, with that error. An error reading
// /proc other than "no such process" is returned with Unknown so callers
// never mistake it for death.
func Check(id Identity) (Liveness, error) {
	if ok, err := Judgeable(id); !ok {
		return Unknown, err
	}
	st, err := ReadStat(id.PID)
	if errors.Is(err, ErrNoProcess) {
		return Dead, nil
	}
	if err != nil {
		return Unknown, err
	}
	if st.StartTime != id.StartTime || st.State == 'Z' || st.State == 'X' {
		return Dead, nil
	}
	return Alive, nil
}
