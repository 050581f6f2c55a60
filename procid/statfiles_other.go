//go:build !linux

package procid

// StatFiles checks identities as Check does; on this system it keeps
// nothing open between checks.
type StatFiles struct{}

// Check is Check.
func (c *StatFiles) Check(id Identity) (Liveness, error) { return Check(id) }

// Sweep does nothing: nothing is kept.
func (c *StatFiles) Sweep() {}
