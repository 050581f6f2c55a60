package procid

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// signal checks id after a pidfd for its pid is open and sends sig through
// the pidfd, so a pid reused between the check and the send cannot receive
// it; without pidfds (Linux < 5.3) the check comes right before a plain
// kill.
func signal(id Identity, sig syscall.Signal) (bool, error) {
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
