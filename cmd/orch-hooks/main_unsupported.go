//go:build !linux && !darwin && !freebsd

// Command orch-hooks runs long jobs against a git repository; on this
// system it only says that it cannot yet (see README.md, "Platforms").
package main

import (
	"fmt"
	"os"
	"runtime"
)

// why names what the system lacks, for the message every command prints.
const why = "orch-hooks judges whether a job's processes are alive by (boot, pid, start time) and stops them by process group and signal, " +
	"which are implemented for Linux, macOS and FreeBSD only; run it there (on Windows: in WSL 2)"

func main() {
	fmt.Fprintf(os.Stderr, "orch-hooks: not supported on %s yet: %s\n", runtime.GOOS, why)
	os.Exit(1)
}
