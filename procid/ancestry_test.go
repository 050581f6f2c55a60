package procid_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/procid"
)

// ownerHelperEnv makes the test binary print procid.ScriptOwner's pid and
// its own parent's pid (or "error: ...") and exit.
const ownerHelperEnv = "PROCID_OWNER_HELPER"

func ownerHelper() int {
	id, err := procid.ScriptOwner()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println(id.PID, os.Getppid())
	return 0
}

// TestScriptOwnerSkipsSubshells runs the helper from shell scripts in the
// ways scripts run commands: the owner is the shell running the script
// ($$), however many subshells were forked in between, and never one of
// them. The helper's own parent is checked too: where bash forks a
// subshell, the parent must not be the script, or the case proves nothing.
func TestScriptOwnerSkipsSubshells(t *testing.T) {
	sh, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not found on PATH")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		idiom    string
		subshell bool // bash runs H from a subshell, not from the script
	}{
		{`o=$(H)`, false},               // bash execs H in the substitution's child
		{`o=$(H 2>/dev/null)`, true},    // bash forks a subshell, which forks H
		{`o=$( (H; true); true)`, true}, // two subshells deep
		{`o=$(H | cat)`, true},          // a pipeline inside the substitution
	} {
		idiom := c.idiom
		t.Run(idiom, func(t *testing.T) {
			script := strings.ReplaceAll(idiom, "H", `"$HELPER" -test.run='^$'`) + "\necho \"$$ $o\"\n"
			cmd := exec.Command(sh, "-c", script)
			cmd.Env = append(os.Environ(), ownerHelperEnv+"=1", "HELPER="+self)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", idiom, err, out)
			}
			var shell, owner, parent int
			if _, err := fmt.Sscan(string(out), &shell, &owner, &parent); err != nil {
				t.Fatalf("script printed %q: %v", out, err)
			}
			if owner != shell {
				t.Errorf("%s: owner %d, want the script's shell %d", idiom, owner, shell)
			}
			if c.subshell && parent == shell {
				t.Errorf("%s: bash ran the helper directly (parent %d): this case tests nothing here", idiom, parent)
			}
		})
	}
}

// TestScriptOwnerOfExecdParent: a command whose parent exec'd (here this
// test, running the helper directly) is owned by that parent.
func TestScriptOwnerOfExecdParent(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), ownerHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.Fields(string(out)); len(got) != 2 || got[0] != fmt.Sprint(os.Getpid()) {
		t.Fatalf("owner and parent %q, want this test process %d", got, os.Getpid())
	}
}
