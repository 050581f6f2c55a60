package procid

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// readStat reads /proc/<pid>/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted after the last ')'.
func readStat(pid int) (Stat, error) {
	b, err := readStatFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errESRCH) {
			return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return Stat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	st, err := parseStat(b)
	if err != nil {
		return st, err
	}
	off, err := bootOffset()
	if err != nil {
		return Stat{}, err
	}
	st.StartTime = uint64(int64(st.StartTime) - off)
	return st, nil
}

func readBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
