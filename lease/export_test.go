package lease

// SetBusyHook makes m call f each time Acquire finds the lease held,
// before it waits.
func SetBusyHook(m *Manager, f func()) { m.busyHook = f }
