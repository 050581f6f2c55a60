package procid

import "syscall"

// GroupLiveness tells whether any process of the process group led by
// leader is still running; Unknown, as Check, when leader cannot be judged
// here (see Judgeable). The group id is the leader's pid. Linux does not
// hand out a pid while a process group of that id exists, so:
//   - the leader itself, with its recorded start time, alive: Alive;
//   - another live process holding the leader's pid: the whole group ended
//     before the pid was reused: Dead;
//   - otherwise the group is alive if any non-zombie process still has it as
//     its process group (the leader died, its children live on).
func GroupLiveness(leader Identity) (Liveness, error) {
	return groupLiveness(leader, groupMembers)
}

// GroupTable answers group liveness questions from one scan of /proc, for
// callers that ask about many groups at once (a reaper pass). The scan is
// made on the first question that needs it.
type GroupTable struct {
	scanned bool
	members map[int]int // pgid → live, non-zombie processes
	err     error
}

// GroupLiveness is GroupLiveness answered from the table.
func (t *GroupTable) GroupLiveness(leader Identity) (Liveness, error) {
	return groupLiveness(leader, func(pgid int) (int, error) {
		if !t.scanned {
			t.scanned = true
			t.members, t.err = scanGroups()
		}
		return t.members[pgid], t.err
	})
}

func groupLiveness(leader Identity, members func(pgid int) (int, error)) (Liveness, error) {
	// A group of another pid namespace is Unknown: its id names some other
	// group here, whose liveness says nothing about it.
	if ok, err := Judgeable(leader); !ok {
		return Unknown, err
	}
	st, err := ReadStat(leader.PID)
	switch {
	case err == nil && st.StartTime == leader.StartTime && st.State != 'Z' && st.State != 'X':
		return Alive, nil
	case err == nil && st.StartTime != leader.StartTime:
		return Dead, nil
	}
	n, err := members(leader.PID)
	if err != nil {
		return Unknown, err
	}
	if n > 0 {
		return Alive, nil
	}
	return Dead, nil
}

// groupMembers counts live, non-zombie processes in process group pgid.
func groupMembers(pgid int) (int, error) {
	m, err := scanGroups()
	return m[pgid], err
}

// SignalGroup sends sig to the process group led by leader, only if that
// group is confirmed alive by identity: a recycled group id, and the group
// id of another pid namespace (which here names another group), are never
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
