// Package procidtest gives tests processes whose identities a judge must
// not take for its own: a process in another pid namespace of this
// machine, as a monitor in a container records itself.
package procidtest

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// NamespaceInit starts a shell as pid 1 of a new pid namespace with its own
// /proc and returns the identity it has there: (host, boot, that
// namespace, pid 1, its start time). It lives until the test ends (it is
// unshare's forked child, killed with it). The test is skipped where
// unshare cannot make the namespace (not root, no user namespaces).
func NamespaceInit(t testing.TB) procid.Identity {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("pid and time namespaces are Linux's; this is %s", runtime.GOOS)
	}
	flags := []string{"--pid", "--fork", "--mount-proc"}
	if out, err := exec.Command("unshare", append(flags, "true")...).CombinedOutput(); err != nil {
		t.Skipf("unshare %s does not work here (needs root or user namespaces): %v: %s", strings.Join(flags, " "), err, out)
	}
	// Field 22 of its own stat, with the shell's builtins (its name, sh,
	// has no spaces); then it waits for the end of its input.
	script := `read -r l </proc/self/stat; set -- $l; shift 21; echo "$(stat -Lc %i /proc/$$/ns/pid) $$ $1"; read -r _`
	cmd := exec.Command("unshare", append(flags, "--kill-child", "sh", "-c", script)...)
	p := testproc.StartCommand(t, cmd)
	line, err := p.Out.ReadString('\n')
	if err != nil {
		t.Fatalf("process in a pid namespace: %v", err)
	}
	var id procid.Identity
	if _, err := fmt.Sscan(line, &id.PidNS, &id.PID, &id.StartTime); err != nil {
		t.Fatalf("process in a pid namespace said %q: %v", line, err)
	}
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	if id.PidNS == self.PidNS || id.PID != 1 {
		t.Fatalf("process in a new pid namespace: %+v; want pid 1 in a namespace other than %d", id, self.PidNS)
	}
	id.Host, id.BootID = self.Host, self.BootID
	return id
}
