package procid_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/testproc"
)

// helperEnv makes the test binary a namespace helper (nsHelper) instead of
// running the tests.
const helperEnv = "PROCID_NS_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(nsHelper())
	}
	if os.Getenv(ownerHelperEnv) != "" {
		os.Exit(ownerHelper())
	}
	os.Exit(m.Run())
}

// report is what the helper tells the test about itself: its identity, or
// why it has none, and the boot-time offset of its time namespace.
type report struct {
	ID         procid.Identity `json:"id"`
	Err        string          `json:"err,omitempty"`
	BootOffset string          `json:"boot_offset"`
	// Offset is procid.BootOffset inside.
	Offset time.Duration `json:"offset"`
}

// verdict is the helper's judgement of an identity the test sent it.
type verdict struct {
	Check    string `json:"check"`
	CheckErr string `json:"check_err,omitempty"`
	Group    string `json:"group"`
	Signaled bool   `json:"signaled"` // SignalGroup with signal 0: would it signal
}

// nsHelper runs inside a namespace: it prints a report, then judges each
// identity (JSON, one a line) it reads from stdin, and exits at the end of
// its input.
func nsHelper() int {
	var r report
	r.ID, _ = procid.Self()
	if _, err := procid.Self(); err != nil {
		r.Err = err.Error()
	}
	if b, err := os.ReadFile("/proc/self/timens_offsets"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "boottime" {
				r.BootOffset = f[1]
			}
		}
	}
	r.Offset, _ = procid.BootOffset()
	enc := json.NewEncoder(os.Stdout)
	enc.Encode(r)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var id procid.Identity
		if err := json.Unmarshal(in.Bytes(), &id); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
		var v verdict
		l, err := procid.Check(id)
		v.Check = l.String()
		if err != nil {
			v.CheckErr = err.Error()
		}
		g, _ := procid.GroupLiveness(id)
		v.Group = g.String()
		v.Signaled, _ = procid.SignalGroup(id, 0)
		enc.Encode(v)
	}
	return 0
}

// nsProc is a helper running under unshare.
type nsProc struct {
	*testproc.Proc
	out *json.Decoder
	rep report
}

// startInNS runs the helper under `unshare flags...`, skipping the test
// when unshare cannot make such namespaces here (not root, no user
// namespaces, a kernel without them). The helper is the forked child of
// unshare, which kills it if unshare dies; it exits when its stdin closes.
func startInNS(t *testing.T, flags ...string) *nsProc {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("pid and time namespaces are Linux's; this is %s", runtime.GOOS)
	}
	if out, err := exec.Command("unshare", append(flags, "true")...).CombinedOutput(); err != nil {
		t.Skipf("unshare %s does not work here (needs root or user namespaces): %v: %s", strings.Join(flags, " "), err, out)
	}
	args := append(append([]string{}, flags...), "--kill-child", os.Args[0], "-test.run=^$")
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	p := &nsProc{Proc: testproc.StartCommand(t, cmd)}
	p.out = json.NewDecoder(p.Out)
	if err := p.out.Decode(&p.rep); err != nil {
		t.Fatalf("helper under unshare %v: no report: %v", flags, err)
	}
	return p
}

// judge asks the helper about id.
func (p *nsProc) judge(t *testing.T, id procid.Identity) verdict {
	t.Helper()
	b, _ := json.Marshal(id)
	if _, err := fmt.Fprintf(p.In, "%s\n", b); err != nil {
		t.Fatal(err)
	}
	var v verdict
	if err := p.out.Decode(&v); err != nil {
		t.Fatalf("helper verdict: %v", err)
	}
	return v
}

// js shows every field of an identity (its String is for users).
func js(id procid.Identity) string {
	b, _ := json.Marshal(id)
	return string(b)
}

func mustSelf(t *testing.T) procid.Identity {
	t.Helper()
	id, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A process in its own pid namespace (with its own /proc) records pids of
// that namespace: from the host its identity is foreign, Unknown, alive or
// ended — never Dead while it runs (a reaper would fail its job as lost)
// nor Alive after; and a host process is just as foreign from inside.
func TestPidNamespaceIsForeign(t *testing.T) {
	p := startInNS(t, "--pid", "--fork", "--mount-proc")
	if p.rep.Err != "" {
		t.Fatalf("Self() inside its own pid namespace with its own /proc: %s", p.rep.Err)
	}
	in := p.rep.ID
	host := mustSelf(t)
	if in.PidNS == 0 || in.PidNS == host.PidNS {
		t.Fatalf("identity inside the namespace %s has pid namespace %d; the host's is %d: want another, non-zero", js(in), in.PidNS, host.PidNS)
	}
	if in.PID != 1 {
		t.Fatalf("helper under unshare --fork records pid %d; want 1, its pid in its namespace", in.PID)
	}
	if l, err := procid.Check(in); l != procid.Unknown || err != nil {
		t.Errorf("live process of another pid namespace, judged from the host: %v, %v; want unknown", l, err)
	}
	if l, err := procid.GroupLiveness(in); l != procid.Unknown || err != nil {
		t.Errorf("its group, judged from the host: %v, %v; want unknown", l, err)
	}
	if ok, err := procid.Judgeable(in); ok || err != nil {
		t.Errorf("Judgeable(foreign namespace) = %v, %v; want false, nil", ok, err)
	}

	v := p.judge(t, host)
	if v.Check != "unknown" || v.CheckErr != "" || v.Group != "unknown" || v.Signaled {
		t.Errorf("the live host test process judged from inside the namespace: %+v; want unknown, not signalled", v)
	}

	if err := p.Close(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	if l, _ := procid.Check(in); l == procid.Alive {
		t.Errorf("ended process of another pid namespace judged alive from the host")
	}
	if l, _ := procid.Check(in); l != procid.Unknown {
		t.Errorf("ended process of another pid namespace: %v; want unknown (tier 3 only)", l)
	}
}

// A time namespace shifts the start times /proc shows its members; the
// identity of one process read inside and outside must still be the same,
// and each side judges the other alive.
func TestTimeNamespaceKeepsIdentity(t *testing.T) {
	p := startInNS(t, "--time", "--boottime", "1000", "--fork")
	if p.rep.Err != "" {
		t.Fatalf("Self() in a time namespace: %s", p.rep.Err)
	}
	if p.rep.BootOffset != "1000" {
		t.Fatalf("helper's boottime offset %q: want 1000 (the time namespace did not apply)", p.rep.BootOffset)
	}
	if p.rep.Offset != 1000*time.Second {
		t.Errorf("BootOffset() inside = %v, want 1000s", p.rep.Offset)
	}
	if off, err := procid.BootOffset(); off != 0 || err != nil {
		t.Errorf("BootOffset() outside = %v, %v; want 0", off, err)
	}
	in := p.rep.ID
	out, err := procid.Of(in.PID)
	if err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Errorf("identity of the same process read inside a time namespace %s and outside %s: want equal", js(in), js(out))
	}
	if l, err := procid.Check(in); l != procid.Alive || err != nil {
		t.Errorf("identity recorded inside the time namespace, judged outside: %v, %v; want alive", l, err)
	}
	if v := p.judge(t, mustSelf(t)); v.Check != "alive" || v.CheckErr != "" {
		t.Errorf("the host test process judged from inside the time namespace: %+v; want alive", v)
	}
}

// In a pid namespace whose /proc is its parent's (unshare --pid without
// --mount-proc) /proc/<pid> is some other process: Self refuses with an
// error that names the fix, and nothing is judged there.
func TestForeignProcRefuses(t *testing.T) {
	p := startInNS(t, "--pid", "--fork")
	if p.rep.Err == "" {
		t.Fatalf("Self() with the parent namespace's /proc recorded %s; want an error", js(p.rep.ID))
	}
	for _, want := range []string{procid.ErrForeignProc.Error(), "--mount-proc"} {
		if !strings.Contains(p.rep.Err, want) {
			t.Errorf("Self() error %q does not say %q", p.rep.Err, want)
		}
	}
	if !p.rep.ID.IsZero() {
		t.Errorf("Self() returned identity %s with its error", js(p.rep.ID))
	}
	host := mustSelf(t)
	v := p.judge(t, host)
	if v.Check != "unknown" || !strings.Contains(v.CheckErr, procid.ErrForeignProc.Error()) || v.Group != "unknown" || v.Signaled {
		t.Errorf("a live host process judged where /proc is not one's own: %+v; want unknown with the /proc error, not signalled", v)
	}
	dead := host
	dead.StartTime++
	if v := p.judge(t, dead); v.Check != "unknown" {
		t.Errorf("a recycled pid judged where /proc is not one's own: %+v; want unknown", v)
	}
}

// A group recorded in another pid namespace whose id and start time happen
// to be those of a live host group (pid numbers of different namespaces
// collide all the time) is never signalled from here.
func TestSignalGroupSparesForeignNamespace(t *testing.T) {
	p := startInNS(t, "--pid", "--fork", "--mount-proc")
	victim := exec.Command("sleep", "1000")
	victim.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Process.Kill(); victim.Wait() })
	vid, err := procid.Of(victim.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	foreign := vid
	foreign.PidNS = p.rep.ID.PidNS
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if sent, err := procid.SignalGroup(foreign, sig); sent || err != nil {
			t.Errorf("SignalGroup(%v) of a group of another pid namespace: sent %v, %v; want not sent", sig, sent, err)
		}
	}
	if l, err := procid.GroupLiveness(vid); l != procid.Alive || err != nil {
		t.Fatalf("the would-be victim group: %v, %v; want still alive", l, err)
	}
	// Positively: the victim has not exited (a signal would have ended it).
	st, err := procid.ReadStat(victim.Process.Pid)
	if err != nil || st.State == 'Z' {
		t.Fatalf("victim: %+v, %v; want running", st, err)
	}
}

func TestOldRecordWithoutNamespace(t *testing.T) {
	self := mustSelf(t)
	old := self
	old.PidNS = 0 // written before namespaces were recorded
	if l, err := procid.Check(old); l != procid.Alive || err != nil {
		t.Errorf("record without a pid namespace of a live process: %v, %v; want alive (same namespace assumed)", l, err)
	}
	old.StartTime++
	if l, err := procid.Check(old); l != procid.Dead || err != nil {
		t.Errorf("record without a pid namespace of a recycled pid: %v, %v; want dead", l, err)
	}
}
