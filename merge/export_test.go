package merge

// SetIndexLockBusy sets the hook lockIndex calls when its first try finds
// index.lock taken (nil: none). Tests that use it do not run in parallel.
func SetIndexLockBusy(f func(path string)) { indexLockBusy = f }
