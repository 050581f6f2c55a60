package procid

import "syscall"

// Signal sends sig to the process id names, only if it is still that
// process: it reports false, and sends nothing, when the process is gone,
// was replaced by another holding its pid, or cannot be judged here. On
// Linux the identity is checked after a pidfd is open and the signal goes
// through it, so a pid reused between the check and the send cannot
// receive it. macOS and FreeBSD have no pidfd for another process: the
// check comes right before a plain kill, and a signal goes astray only if
// the process exits and its pid is handed out again in between, which
// both kernels' default of giving pids out in increasing order (up to
// 99999, then wrapping) makes take a whole turn of the pid space.
func Signal(id Identity, sig syscall.Signal) (bool, error) { return signal(id, sig) }
