package remotejob_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

// TestExpireSightingsNotARegularFile: what sits at this machine's
// sightings file is not trusted to be one. A FIFO is never waited on, a
// symlink never followed (its target is left as it was), a directory
// never descended: each is moved aside and said, the observations start
// over, and the job still expires one TTL later.
func TestExpireSightingsNotARegularFile(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink", "directory"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			r := refstoretest.NewRemote(t)
			run := newMachine(t, r.FileURL(), "runner")
			obs := newMachine(t, r.FileURL(), "observer")
			clock := &fakeBoot{boot: "b1", now: time.Hour}
			remotejob.SetBootClock(obs.q, clock.read)
			obs.q.TTL = 3 * time.Second
			id := gitstate.JobID("seen", "build", 1)
			must(run.q.Enqueue(ctx, job("seen", "build", 1)))(t)
			must(run.q.Claim(ctx, id))(t)

			seen := filepath.Join(obs.q.StateDir, "remote-jobs-seen.toml")
			target := filepath.Join(t.TempDir(), "elsewhere")
			const precious = "not the observer's\n"
			switch kind {
			case "fifo":
				if err := syscall.Mkfifo(seen, 0o600); err != nil {
					t.Skipf("no FIFOs here: %v", err)
				}
			case "symlink":
				if err := os.WriteFile(target, []byte(precious), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, seen); err != nil {
					t.Fatal(err)
				}
			case "directory":
				if err := os.Mkdir(seen, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			syncQ(t, obs)
			type result struct {
				xs  []remotejob.Expiry
				err error
			}
			done := make(chan result, 1)
			go func() {
				xs, err := obs.q.Expire(ctx)
				done <- result{xs, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("Expire still waiting on a %s at its sightings file after 30 s", kind)
			}
			if res.err == nil || !strings.Contains(res.err.Error(), "moved to") || len(res.xs) != 0 {
				t.Fatalf("first pass over a %s: %+v, %v; want it moved aside and said, nothing expired", kind, res.xs, res.err)
			}
			if kind == "symlink" {
				if b, err := os.ReadFile(target); err != nil || string(b) != precious {
					t.Fatalf("the symlink's target: %q, %v; want it untouched", b, err)
				}
			}
			if fi, err := os.Lstat(seen); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("sightings file after the pass: %v, %v; want a regular file", fi, err)
			}
			clock.advance(obs.q.TTL)
			if xs := expire(t, obs); len(xs) != 1 || !xs[0].Won {
				t.Fatalf("a TTL after the observations started over: %+v", xs)
			}
			checkInvariants(t, r)
		})
	}
}
