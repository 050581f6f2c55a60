package procid

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// Signal sends sig to the process id names, only if it is still that
// process: it reports false, and sends nothing, when the process is gone,
// was replaced by another holding its pid, or cannot be judged here. Where
// the kernel has pidfds the identity is checked after the pidfd is open
// and the signal goes through it, so a pid reused between the check and
// the send cannot receive it; elsewhere the check comes right before a
// plain kill.
func Signal(id Identity, sig syscall.Signal) (bool, error) {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		fd = -1
	} else {
		defer unix.Close(fd)
	}
	if l, err := Check(id); l != Alive {
		return false, err
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, sig, nil, 0)
	} else {
		err = syscall.Kill(id.PID, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	return err == nil, err
}
