//go:build darwin || freebsd

package procid

import (
	"errors"
	"syscall"
)

func signal(id Identity, sig syscall.Signal) (bool, error) {
	if l, err := Check(id); l != Alive {
		return false, err
	}
	err := syscall.Kill(id.PID, sig)
	if errors.Is(err, syscall.ESRCH) {
		return false, nil
	}
	return err == nil, err
}
