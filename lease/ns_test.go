package lease_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
)

// nsInit starts a shell as pid 1 of a new pid namespace with its own /proc
// and returns the identity it has there: (host, boot, that namespace, pid
// 1, its start time). It lives until the test ends. The test is skipped
// where unshare cannot do it.
func nsInit(t *testing.T) procid.Identity {
	t.Helper()
	flags := []string{"--pid", "--fork", "--mount-proc"}
	if out, err := exec.Command("unshare", append(flags, "true")...).CombinedOutput(); err != nil {
		t.Skipf("unshare %s does not work here (needs root or user namespaces): %v: %s", strings.Join(flags, " "), err, out)
	}
	// Field 22 of its own stat, with the shell's builtins (its name, sh,
	// has no spaces); then it waits for the end of its input.
	script := `read -r l </proc/self/stat; set -- $l; shift 21; echo "$(stat -Lc %i /proc/$$/ns/pid) $$ $1"; read -r _`
	cmd := exec.Command("unshare", append(flags, "--kill-child", "sh", "-c", script)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("process in a pid namespace: %v", err)
	}
	var id procid.Identity
	if _, err := fmt.Sscan(line, &id.PidNS, &id.PID, &id.StartTime); err != nil {
		t.Fatalf("process in a pid namespace said %q: %v", line, err)
	}
	me := self(t)
	if id.PidNS == me.PidNS || id.PID != 1 {
		t.Fatalf("process in a new pid namespace: %+v; want pid 1 in a namespace other than %d", id, me.PidNS)
	}
	id.Host, id.BootID = me.Host, me.BootID
	return id
}

// A lease taken inside another pid namespace (its owner's pid, 1 there, is
// another process here) cannot be judged by liveness from here: only its
// TTL frees it.
func TestOwnerInOtherPidNamespaceIsNotDead(t *testing.T) {
	m, clk, _ := newManager(t)
	inside := nsInit(t)
	l := mustAcquire(t, m, "main", lease.Request{Holder: "container", Owner: inside, TTL: time.Minute})
	got := mustGet(t, m, "main")
	if got == nil || got.Owner != inside {
		t.Fatalf("lease record owner %+v, want %+v (pid_ns kept on disk)", got, inside)
	}
	if stale, why := lease.Stale(got, clk.Now()); stale {
		t.Fatalf("lease of a live process of another pid namespace stale: %s", why)
	}
	if rec, errs := m.ReclaimStale(context.Background(), false); len(rec) != 0 || len(errs) != 0 {
		t.Fatalf("reclaimed %v (%v) inside the TTL", rec, errs)
	}
	clk.Advance(time.Minute + time.Millisecond)
	stale, why := lease.Stale(l, clk.Now())
	if !stale || !strings.Contains(why, "ttl") {
		t.Fatalf("expired lease of another pid namespace's process: stale %v (%s); want stale by ttl", stale, why)
	}
	if rec, errs := m.ReclaimStale(context.Background(), false); len(rec) != 1 || len(errs) != 0 {
		t.Fatalf("past the TTL: reclaimed %v (%v); want the lease", rec, errs)
	}
}
