package procid

import (
	"syscall"
	"testing"
)

// Signal reaches the process an identity names, and only it: an identity
// whose start time is not the live process's (its pid reused) gets nothing,
// and the live process is untouched.
func TestSignalOnlyByIdentity(t *testing.T) {
	cmd := startSleeper(t)
	id, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stale := id
	stale.StartTime--
	if ok, err := Signal(stale, syscall.SIGKILL); ok || err != nil {
		t.Fatalf("Signal(stale identity) = %v, %v; want false, nil", ok, err)
	}
	if l, _ := Check(id); l != Alive {
		t.Fatalf("the process was hit by a signal meant for another: %v", l)
	}
	if ok, err := Signal(id, syscall.SIGKILL); !ok || err != nil {
		t.Fatalf("Signal(identity) = %v, %v; want true, nil", ok, err)
	}
	waitExitedNoReap(t, cmd.Process.Pid)
	if ok, err := Signal(id, syscall.SIGKILL); ok || err != nil {
		t.Fatalf("Signal(exited, unreaped) = %v, %v; want false, nil", ok, err)
	}
}
