package procid

import (
	"os"
	"strconv"
)

// scanGroups counts the live, non-zombie processes of every process group.
func scanGroups() (map[int]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	m := map[int]int{}
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		st, err := ReadStat(pid)
		if err != nil {
			continue // exited while we looked
		}
		if st.State != 'Z' && st.State != 'X' {
			m[st.PGID]++
		}
	}
	return m, nil
}
