package procid

import (
	"os"
	"os/exec"
	"testing"
)

func TestSelfIsAlive(t *testing.T) {
	id, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if id.PID != os.Getpid() || id.StartTime == 0 || id.BootID == "" || id.Host == "" {
		t.Fatalf("Self() = %+v, want pid, start time, boot id and host filled in", id)
	}
	if l, err := Check(id); l != Alive || err != nil {
		t.Fatalf("Check(self) = %v, %v; want alive", l, err)
	}
}

// startSleeper starts a child that lives until killed.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func TestChildLifecycle(t *testing.T) {
	cmd := startSleeper(t)
	id, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := Check(id); l != Alive {
		t.Fatalf("running child: %v, want alive", l)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExitedNoReap(t, cmd.Process.Pid)
	st, err := ReadStat(cmd.Process.Pid)
	if err != nil || st.State != 'Z' {
		t.Fatalf("killed, unreaped child: stat %+v, %v; want state Z", st, err)
	}
	if l, _ := Check(id); l != Dead {
		t.Fatalf("zombie child: %v, want dead", l)
	}
	cmd.Wait()
	if l, _ := Check(id); l != Dead {
		t.Fatalf("reaped child: %v, want dead", l)
	}
}

// A pid held by a process with another start time is a different process:
// the one recorded is dead even though the pid answers.
func TestReusedPIDIsDead(t *testing.T) {
	cmd := startSleeper(t)
	live, err := Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, delta := range []int64{-1, +1} {
		recorded := live
		recorded.StartTime = uint64(int64(live.StartTime) + delta)
		if l, err := Check(recorded); l != Dead || err != nil {
			t.Errorf("pid %d recorded with start %d, live process started %d: %v, %v; want dead",
				live.PID, recorded.StartTime, live.StartTime, l, err)
		}
	}
	if l, _ := Check(live); l != Alive {
		t.Fatalf("the live process itself: %v, want alive", l)
	}
}

func TestOtherMachineIsUnknown(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	other := self
	other.Host = "elsewhere"
	if l, _ := Check(other); l != Unknown {
		t.Errorf("other host: %v, want unknown", l)
	}
	other = self
	other.BootID = "00000000-0000-0000-0000-000000000000"
	if l, _ := Check(other); l != Unknown {
		t.Errorf("other boot: %v, want unknown", l)
	}
	if l, _ := Check(Identity{}); l != Unknown {
		t.Errorf("zero identity: %v, want unknown", l)
	}
}

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses; fields are counted
	// after the last ')'.
	line := "4242 (we ird) (name) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stat{State: 'S', PPID: 1, PGID: 4240, Flags: 4194560, StartTime: 987654}); st != want {
		t.Fatalf("parseStat = %+v, want %+v", st, want)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q): no error", bad)
		}
	}
}

func TestReadStatMissing(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	// The pid was reaped; it is free unless reused, and either way a
	// recorded identity with a made-up start time is not alive.
	if l, _ := Check(Identity{Host: mustHost(t), BootID: mustBoot(t), PID: cmd.Process.Pid, StartTime: 1}); l != Dead {
		t.Errorf("exited child: %v, want dead", l)
	}
}

func mustHost(t *testing.T) string {
	h, err := Host()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustBoot(t *testing.T) string {
	b, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseBootOffset(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"monotonic 0 0\nboottime 0 0\n", 0},
		{"monotonic           0         0\nboottime         1000         0\n", 100000},
		{"monotonic 5 0\nboottime -20 0\n", -2000},
		{"boottime 1 5000000\n", 100},    // 1.005 s: floor to whole ticks
		{"boottime -1 -5000000\n", -101}, // -1.005 s
		{"7 3 0\n", 300},
	} {
		got, err := parseBootOffset([]byte(c.in))
		if err != nil || got != c.want {
			t.Errorf("parseBootOffset(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "monotonic 0 0\n", "boottime x 0\n"} {
		if _, err := parseBootOffset([]byte(bad)); err == nil {
			t.Errorf("parseBootOffset(%q): no error", bad)
		}
	}
}
