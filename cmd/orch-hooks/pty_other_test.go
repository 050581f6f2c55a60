//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// openPTY: the scripts' ttyexec opens a pseudo-terminal the Linux way
// only; CI runs the scripts on Linux.
func openPTY() (master, slave *os.File, err error) {
	return nil, nil, fmt.Errorf("ttyexec opens pseudo-terminals on Linux only, not %s", runtime.GOOS)
}
