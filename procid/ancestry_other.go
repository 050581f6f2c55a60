//go:build !linux

package procid

import "os"

// Without the kernel's per-process flags a subshell cannot be told from
// the script that forked it: the owner is the parent (issue 16 brings
// macOS's own answer).
func scriptOwner() (Identity, error) { return Of(os.Getppid()) }
