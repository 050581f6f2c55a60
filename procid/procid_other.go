//go:build !linux && !darwin && !freebsd

package procid

import (
	"fmt"
	"runtime"
)

// errUnsupported is why nothing is recorded or judged on a system this
// package has no process table reader for: an identity it cannot read is
// refused, never made up, and every process is Unknown (tier 3 only).
var errUnsupported = fmt.Errorf("process identity is not implemented on %s (only Linux, macOS and FreeBSD)", runtime.GOOS)

func readStat(pid int) (Stat, error)   { return Stat{}, fmt.Errorf("pid %d: %w", pid, errUnsupported) }
func readBootID() (string, error)      { return "", errUnsupported }
func readPidNS() (uint64, error)       { return 0, errUnsupported }
func readBootOffset() (int64, error)   { return 0, nil }
func scriptOwner() (Identity, error)   { return Identity{}, errUnsupported }
func scanGroups() (map[int]int, error) { return nil, errUnsupported }
