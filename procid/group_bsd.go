//go:build darwin || freebsd

package procid

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// scanGroups counts the live, non-zombie processes of every process group
// from one listing of the process table (kern.proc.all on macOS,
// kern.proc.proc on FreeBSD: processes, not threads). The table can grow
// between the size query and the read (ENOMEM): the read is retried.
func scanGroups() (map[int]int, error) {
	var err error
	for range 5 {
		var b []byte
		b, err = unix.SysctlRaw(procListName)
		if errors.Is(err, unix.ENOMEM) {
			continue
		}
		if err != nil {
			break
		}
		ks, err := decodeKinfoList(b, kinfoLayoutHere)
		if err != nil {
			return nil, err
		}
		return groupCounts(ks), nil
	}
	return nil, fmt.Errorf("listing processes (sysctl %s): %w", procListName, err)
}
