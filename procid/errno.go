package procid

import "syscall"

// A /proc/<pid> directory can vanish between open and read; the read then
// fails with ESRCH rather than ENOENT.
var errESRCH error = syscall.ESRCH
