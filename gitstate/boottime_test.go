package gitstate

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// BootTime is the host's clock: read in a time namespace whose boot clock
// runs 1000 s ahead, it reads what it reads outside (the two readings
// bracket it), so the reaper compares a monitor's stamps made in a
// container with its own.
func TestBootTimeIgnoresTimeNamespace(t *testing.T) {
	if out, err := exec.Command("unshare", "--time", "--boottime", "1000", "--fork", "true").CombinedOutput(); err != nil {
		t.Skipf("no time namespace here (unshare --time: %v: %s)", err, out)
	}
	before, ok := BootTime()
	if !ok {
		t.Fatal("BootTime not readable")
	}
	cmd := exec.Command("unshare", "--time", "--boottime", "1000", "--fork", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GITSTATE_HELPER=boottime")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	after, _ := BootTime()
	var inside int64
	var insideOK bool
	if _, err := fmt.Sscan(string(out), &inside, &insideOK); err != nil || !insideOK {
		t.Fatalf("helper printed %q (%v)", out, err)
	}
	if d := time.Duration(inside); d < before || d > after {
		t.Errorf("BootTime in a time namespace 1000 s ahead = %v, outside it read %v then %v", d, before, after)
	}
}
