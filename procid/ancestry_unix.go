//go:build linux || darwin || freebsd

package procid

import (
	"fmt"
	"os"
)

// maxAncestry bounds the walk up the process tree; no real chain of
// subshells is this deep.
const maxAncestry = 1024

func scriptOwner() (Identity, error) {
	self, err := Self()
	if err != nil {
		return Identity{}, err
	}
	child, childStart := self.PID, self.StartTime
	for range maxAncestry {
		st, err := ReadStat(child)
		if err != nil {
			return Identity{}, fmt.Errorf("reading the process tree: %w", err)
		}
		if st.PPID == 0 {
			// Pid 1 of a namespace, or a parent outside this pid
			// namespace: nothing above it can be named here.
			if child == self.PID {
				return Identity{}, fmt.Errorf("this process has no parent in its pid namespace")
			}
			return Of(child)
		}
		up, err := ReadStat(st.PPID)
		if err != nil {
			return Identity{}, fmt.Errorf("reading the process tree: parent %d of %d: %w", st.PPID, child, err)
		}
		// up is child's parent only if child is still the same live
		// process with the same parent now that up was read.
		again, err := ReadStat(child)
		if err != nil || again.StartTime != childStart || again.PPID != st.PPID || again.State == 'Z' || up.State == 'Z' {
			return Identity{}, fmt.Errorf("the process tree changed while it was read (pid %d or its parent %d ended)", child, st.PPID)
		}
		if up.Flags&PFForkNoExec == 0 || st.PPID == 1 {
			id := self
			id.PID, id.StartTime = st.PPID, up.StartTime
			return id, nil
		}
		child, childStart = st.PPID, up.StartTime
	}
	return Identity{}, fmt.Errorf("more than %d forked-but-not-exec'd ancestors above pid %d", maxAncestry, os.Getpid())
}
