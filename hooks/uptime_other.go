//go:build !linux

package hooks

import "time"

// procUptime: without /proc the script has no clock to compare with; it
// always starts the binary, which decides from the due file's first
// fields.
func procUptime() (time.Duration, bool) { return 0, false }
