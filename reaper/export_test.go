package reaper

import "context"

// SaveState writes st as the reaper's state in stateDir, as a pass does.
func SaveState(stateDir string, st *State) error {
	return updateState(context.Background(), stateDir, func(cur *State) error {
		*cur = *st
		return nil
	})
}
