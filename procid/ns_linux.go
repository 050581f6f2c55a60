package procid

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func readPidNS() (uint64, error) {
	pid := os.Getpid()
	fix := "mount a /proc for the pid namespace (e.g. start it with `unshare --pid --fork --mount-proc`, or `mount -t proc proc /proc` inside it) or run outside that namespace"
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return 0, fmt.Errorf("%w: /proc/self: %v (this process is pid %d); %s", ErrForeignProc, err, pid, fix)
	}
	if self != strconv.Itoa(pid) {
		return 0, fmt.Errorf("%w: /proc/self is pid %s but this process is pid %d, so /proc belongs to another pid namespace; %s", ErrForeignProc, self, pid, fix)
	}
	// A /proc of an ancestor namespace whose pid for this process happens
	// to equal its own pid: NSpid lists it in each namespace from the
	// /proc's down to its own, so more than one entry gives it away.
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
				if f := strings.Fields(rest); len(f) != 1 {
					return 0, fmt.Errorf("%w: /proc shows this process as pids %s in nested namespaces; %s", ErrForeignProc, strings.Join(f, ", "), fix)
				}
			}
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0, fmt.Errorf("pid namespace of this process: %w", err)
	}
	return st.Ino, nil
}

func readBootOffset() (int64, error) {
	b, err := os.ReadFile("/proc/self/timens_offsets")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // no time namespaces (Linux < 5.6): nothing shifted
	}
	if err != nil {
		return 0, fmt.Errorf("time namespace offsets: %w", err)
	}
	return parseBootOffset(b)
}
