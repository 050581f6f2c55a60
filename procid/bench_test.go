package procid_test

import (
	"os"
	"testing"

	"github.com/orch-hooks/orch-hooks/procid"
)

// BenchmarkCheck is the identity check the reaper makes for every process
// of every running job: host and boot id (cached), then /proc/<pid>/stat.
func BenchmarkCheck(b *testing.B) {
	self, err := procid.Self()
	if err != nil {
		b.Fatal(err)
	}
	dead := self
	dead.StartTime++ // the same pid, another start time: a recycled pid
	for _, c := range []struct {
		name string
		id   procid.Identity
		want procid.Liveness
	}{{"alive", self, procid.Alive}, {"recycled-pid", dead, procid.Dead}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if l, err := procid.Check(c.id); err != nil || l != c.want {
					b.Fatalf("check: %v, %v", l, err)
				}
			}
		})
	}
}

// BenchmarkOf reads the identity of a process (this one).
func BenchmarkOf(b *testing.B) {
	pid := os.Getpid()
	for i := 0; i < b.N; i++ {
		if _, err := procid.Of(pid); err != nil {
			b.Fatal(err)
		}
	}
}
