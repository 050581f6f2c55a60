// Package crashpoint is a test facility: named points in the code paths that
// write state, where a process kills itself with SIGKILL when told to by the
// environment, so tests can crash it at an exact step and check what the
// survivors make of the state left behind.
//
// ORCH_CRASHPOINT=name kills the process the first time it reaches name;
// ORCH_CRASHPOINT=name:n the n-th time. Unset, Hit costs one comparison of
// a string read once at start.
package crashpoint

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// EnvVar is the environment variable that arms a crash point.
const EnvVar = "ORCH_CRASHPOINT"

var (
	armed string // name of the armed point, "" when none
	nth   = 1
	mu    sync.Mutex
	hits  int
)

func init() {
	v := os.Getenv(EnvVar)
	if v == "" {
		return
	}
	name, count, ok := strings.Cut(v, ":")
	if ok {
		if n, err := strconv.Atoi(count); err == nil && n > 0 {
			nth = n
		}
	}
	armed = name
}

// Hit kills the process with SIGKILL if name is the armed crash point and
// this is the armed hit. It returns otherwise.
func Hit(name string) {
	if armed == "" || name != armed {
		return
	}
	mu.Lock()
	hits++
	h := hits
	mu.Unlock()
	if h == nth {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late, but never run on.
	}
}
