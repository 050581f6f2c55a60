package hooks

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// DueFileName is the file in the state dir that tells the next hook when a
// pass is next due, so that most commits decide from it alone: the hook
// script reads it with the shell's own read builtin and exits without
// starting the binary at all, and the binary, when started, reads it and
// stats orch.toml instead of decoding orch.toml and reaper.toml. It is a
// cache: written without fsync, and anything unexpected in it (a torn
// write, another config, another boot) means "decide the slow way".
//
// One line, space-separated:
//
//	v2 <last pass, unix ns> <due, unix ns> <config key> <boot id> <due, whole seconds of /proc/uptime> x<ORCH_REAPER_INTERVAL_S> <config path>
//
// The shell cannot read a clock without a fork but can read /proc/uptime
// (CLOCK_BOOTTIME, which wall-clock changes do not move); the boot id
// makes the uptime comparable.
const DueFileName = "hook-due"

// NotDue reports whether the pass a hook would make is not due at now: the
// due file names the config file as it is now (same file, size and
// modification time, same ORCH_REAPER_INTERVAL_S) and now lies between the
// last pass and the time the next one is due. A clock moved back before
// the last pass makes a pass due, as the slow path does.
func NotDue(stateDir, configPath string, now time.Time) bool {
	key, ok := configKey(configPath)
	if !ok {
		return false
	}
	// statefile.ReadFile: a FIFO or symlink in its place is refused, never
	// waited on (a hook must never hang the git command).
	b, err := statefile.ReadFile(filepath.Join(stateDir, DueFileName), 4096)
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) < 4 || f[0] != "v2" || f[3] != key {
		return false
	}
	last, err1 := strconv.ParseInt(f[1], 10, 64)
	due, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	n := now.UnixNano()
	return last <= n && n < due
}

// recordDue writes the due file after a pass at last, or after the slow
// path found one recent enough. Best effort: a hook never fails for it.
func recordDue(stateDir, configPath string, last time.Time, interval time.Duration) {
	key, ok := configKey(configPath)
	if !ok {
		return
	}
	due := last.Add(interval)
	// The shell's fields: "-" where the shell must not skip (it then
	// starts the binary, which decides from the first fields).
	boot, up, shellPath := "-", int64(0), "-"
	if id, err := procid.BootID(); err == nil && id != "" && !strings.ContainsAny(id, " \t\n") {
		// Inside a time namespace /proc/uptime is shifted by its offset,
		// and a hook may run in another namespace than this pass: the
		// fast path is written only where no offset applies (the script
		// checks its own side likewise).
		if off, err := procid.BootOffset(); err == nil && off == 0 {
			if now, ok := procUptime(); ok {
				if left := time.Until(due); left > 0 {
					boot, up = id, int64(now+left)/int64(time.Second)
				}
			}
		}
	}
	if abs, err := filepath.Abs(configPath); err == nil && abs == strings.TrimSpace(abs) && !strings.ContainsAny(abs, "\n\r") {
		shellPath = abs
	}
	line := fmt.Sprintf("v2 %d %d %s %s %d x%s %s\n", last.UnixNano(), due.UnixNano(), key,
		boot, up, os.Getenv("ORCH_REAPER_INTERVAL_S"), shellPath)
	path := filepath.Join(stateDir, DueFileName)
	// Named as statefile names its temporary files: one convention for
	// whatever a crash leaves in the state dir.
	tmp := filepath.Join(stateDir, fmt.Sprintf("%s%s-%d", statefile.TempPrefix, DueFileName, os.Getpid()))
	if err := writeDue(tmp, path, line); err != nil {
		os.Remove(tmp)
	}
}

// writeDue puts line at path through tmp: created exclusively and never
// through a symlink (one a crash of this pid left is unlinked first), then
// renamed over path, which replaces whatever is there without following it.
func writeDue(tmp, path, line string) error {
	os.Remove(tmp)
	f, err := statefile.Open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// configKey names the config file as it is now — its identity, size and
// modification time — and the interval override from the environment.
// ok is false without a config file: the fast path then stays off.
func configKey(configPath string) (key string, ok bool) {
	if configPath == "" {
		return "", false
	}
	fi, err := os.Stat(configPath)
	if err != nil {
		return "", false
	}
	var dev, ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		dev, ino = uint64(st.Dev), st.Ino
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%d %d %d %d %q", dev, ino, fi.Size(), fi.ModTime().UnixNano(), os.Getenv("ORCH_REAPER_INTERVAL_S"))
	return strconv.FormatUint(h.Sum64(), 16), true
}
