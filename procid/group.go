package procid

import (
	"os"
	"strconv"
	"syscall"
)

// GroupLiveness tells whether any process of the process group led by
// leader is still running. The group id is the leader's pid. Linux does not
// hand out a pid while a process group of that id exists, so:
//   - the leader itself, with its recorded start time, alive: Alive;
//   - another live process holding the leader's pid: the whole group ended
//     before the pid was reused: Dead;
//   - otherwise the group is alive if any non-zombie process still has it as
//     its process group (the leader died, its children live on).
func GroupLiveness(leader Identity) (Liveness, error) {
	if leader.IsZero() || !Local(leader) {
		return Unknown, nil
	}
	st, err := ReadStat(leader.PID)
	switch {
	case err == nil && st.StartTime == leader.StartTime && st.State != 'Z' && st.State != 'X':
		return Alive, nil
	case err == nil && st.StartTime != leader.StartTime:
		return Dead, nil
	}
	members, err := groupMembers(leader.PID)
	if err != nil {
		return Unknown, err
	}
	if members > 0 {
		return Alive, nil
	}
	return Dead, nil
}

// groupMembers counts live, non-zombie processes in process group pgid.
func groupMembers(pgid int) (int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		st, err := ReadStat(pid)
		if err != nil {
			continue // exited while we looked
		}
		if st.PGID == pgid && st.State != 'Z' && st.State != 'X' {
			n++
		}
	}
	return n, nil
}

// SignalGroup sends sig to the process group led by leader, only if that
// group is confirmed alive by identity: a recycled group id is never
// signalled. It reports whether the signal was sent.
func SignalGroup(leader Identity, sig syscall.Signal) (bool, error) {
	l, err := GroupLiveness(leader)
	if err != nil || l != Alive {
		return false, err
	}
	if err := syscall.Kill(-leader.PID, sig); err != nil {
		if err == syscall.ESRCH {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
