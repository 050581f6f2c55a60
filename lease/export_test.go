package lease

// SetBusyHook makes m call f each time Acquire finds the lease held,
// before it waits.
func SetBusyHook(m *Manager, f func()) { m.busyHook = f }

// LockPath is the path of the record lock of target.
func LockPath(m *Manager, target string) string { return m.lockPath(target) }

// SetNoWatch makes m's waiters poll, as where the file system cannot
// notify them.
func SetNoWatch(m *Manager) { m.noWatch = true }
