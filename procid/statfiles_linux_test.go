package procid

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// StatFiles answers as Check does over a process's life, keeping the stat
// file of a live process open between checks and reading it again there:
// the kept file shows the process become a zombie, and once it is reaped
// the kept file fails with ESRCH (the file is bound to the process, not
// to its pid), which is Dead.
func TestStatFilesLifecycle(t *testing.T) {
	for _, reap := range []bool{false, true} {
		var c StatFiles
		cmd := startSleeper(t)
		id, err := Of(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if l, err := c.Check(id); l != Alive || err != nil {
				t.Fatalf("check %d of a running child: %v, %v; want alive", i, l, err)
			}
		}
		kept, ok := c.files[id]
		if !ok || len(c.files) != 1 {
			t.Fatalf("files kept after checking a live child: %v; want its stat file", c.files)
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		waitExitedNoReap(t, cmd.Process.Pid)
		if reap {
			cmd.Wait()
			// What the kept file says of a reaped process, whatever
			// holds its pid now.
			if _, err := c.read(kept.fd); !errors.Is(err, ErrNoProcess) {
				t.Fatalf("kept stat file of a reaped child: %v; want ErrNoProcess", err)
			}
		}
		if l, err := c.Check(id); l != Dead || err != nil {
			t.Fatalf("killed child (reaped %v): %v, %v; want dead", reap, l, err)
		}
		if len(c.files) != 0 {
			t.Fatalf("files kept for a dead child: %v", c.files)
		}
		if _, err := unix.FcntlInt(uintptr(kept.fd), unix.F_GETFD, 0); err == nil && !reap {
			// The descriptor may have been reused meanwhile only by this
			// test's own opens: the zombie case makes none.
			t.Errorf("stat file of a dead child still open")
		}
		cmd.Wait()
	}
}

// A recycled pid (the same pid, another start time), a pid that no process
// holds and an identity of another host are judged as Check judges them,
// and no file is kept for any of them.
func TestStatFilesAsCheck(t *testing.T) {
	var c StatFiles
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	recycled := self
	recycled.StartTime++
	gone := self
	gone.PID = 1 << 22 // above pid_max's largest value: never a process
	foreign := self
	foreign.Host = "elsewhere.example"
	for _, id := range []Identity{recycled, gone, foreign, {}} {
		want, wantErr := Check(id)
		got, err := c.Check(id)
		if got != want || (err == nil) != (wantErr == nil) {
			t.Errorf("%+v: StatFiles.Check = %v, %v; Check = %v, %v", id, got, err, want, wantErr)
		}
	}
	if len(c.files) != 0 {
		t.Fatalf("files kept for processes not alive: %v", c.files)
	}
	if l, err := c.Check(self); l != Alive || err != nil {
		t.Fatalf("self: %v, %v", l, err)
	}
}

// Sweep closes the files of processes not checked since the last Sweep and
// keeps those checked.
func TestStatFilesSweep(t *testing.T) {
	var c StatFiles
	a, b := startSleeper(t), startSleeper(t)
	ida, _ := Of(a.Process.Pid)
	idb, _ := Of(b.Process.Pid)
	for _, id := range []Identity{ida, idb} {
		if l, err := c.Check(id); l != Alive || err != nil {
			t.Fatalf("%v: %v, %v", id, l, err)
		}
	}
	c.Sweep()
	if len(c.files) != 2 {
		t.Fatalf("swept files checked since the last sweep: %v", c.files)
	}
	c.Check(ida)
	c.Sweep()
	if _, ok := c.files[idb]; ok || len(c.files) != 1 {
		t.Fatalf("after a sweep with only %d checked: %v; want only its file", ida.PID, c.files)
	}
}
