package statefile

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/testproc"
)

// BenchmarkTryLock: an uncontended TryLock and its unlock, before
// github.com/gofrs/flock (old) and now (new), in the same run.
func BenchmarkTryLock(b *testing.B) {
	for _, v := range []struct {
		name string
		try  func(string) (func(), error)
	}{{"old", oldTryLock}, {"new", TryLock}} {
		b.Run(v.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "x.lock")
			cpu := cpuTime()
			for b.Loop() {
				unlock, err := v.try(path)
				if err != nil {
					b.Fatal(err)
				}
				unlock()
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkLockPoll: one try of a held lock, what a waiter pays per poll.
// The old Lock kept its descriptor and called flock(2) again; flock.Flock
// opens and closes the file on every try that fails.
func BenchmarkLockPoll(b *testing.B) {
	path := filepath.Join(b.TempDir(), "x.lock")
	unlock, err := TryLock(path)
	if err != nil {
		b.Fatal(err)
	}
	defer unlock()
	b.Run("old", func(b *testing.B) {
		f, err := oldOpenLockFile(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		defer reportCPU(b, cpuTime())
		for b.Loop() {
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != syscall.EWOULDBLOCK {
				b.Fatalf("flock of a held lock: %v", err)
			}
		}
	})
	b.Run("new", func(b *testing.B) {
		l := newLockFile(path)
		defer reportCPU(b, cpuTime())
		for b.Loop() {
			if _, err := l.try(); err == nil {
				b.Fatal("took a held lock")
			}
		}
	})
}

// cpuTime is the CPU time (user and system) this process has used. On a
// machine shared with other work, the wall-clock time of a loop of system
// calls measures the queue for the CPU as much as the calls; cpu-ns/op does
// not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// handOffHolder is the holding process of BenchmarkLockHandOff: on "lock"
// it takes the lock and says "locked"; on "release" it reads the clock,
// unlocks and prints the time it read (Unix ns).
func handOffHolder(path string) {
	in := bufio.NewScanner(os.Stdin)
	var unlock func()
	for in.Scan() {
		switch in.Text() {
		case "lock":
			var err error
			if unlock, err = Lock(context.Background(), path); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			fmt.Println("locked")
		case "release":
			t0 := time.Now()
			unlock()
			fmt.Println(t0.UnixNano())
		}
	}
}

// BenchmarkLockHandOff: how late a waiter gets a lock released after a
// hold of 2, 20 or 200 ms, by another process or by another goroutine: the old Lock
// (its own flock(2), backing off from 200 µs to 8 ms), flock.Flock with
// that backoff, flock.Flock polled every 1 ms (TryLockContext's fixed
// delay), and Lock now. handoff-ms is the mean delay from the holder's
// unlock to the waiter holding the lock, p50-ms and p90-ms its quantiles,
// tries the polls per wait.
func BenchmarkLockHandOff(b *testing.B) {
	type variant struct {
		name string
		lock func(ctx context.Context, path string, tries *int) (func(), error)
	}
	withPoll := func(next func() func(time.Duration) time.Duration) func(context.Context, string, *int) (func(), error) {
		return func(ctx context.Context, path string, tries *int) (func(), error) {
			p := next()
			return lock(ctx, path, func(w time.Duration) time.Duration { *tries++; return p(w) })
		}
	}
	variants := []variant{
		{"old", func(ctx context.Context, path string, _ *int) (func(), error) { return oldLock(ctx, path) }},
		{"flock-backoff", withPoll(func() func(time.Duration) time.Duration {
			wait := 100 * time.Microsecond
			return func(time.Duration) time.Duration { wait = min(2*wait, 8*time.Millisecond); return wait }
		})},
		{"flock-1ms", withPoll(func() func(time.Duration) time.Duration {
			return func(time.Duration) time.Duration { return time.Millisecond }
		})},
		{"new", withPoll(func() func(time.Duration) time.Duration { return pollInterval })},
	}
	for _, holder := range []string{"process", "goroutine"} {
		for _, hold := range []time.Duration{2 * time.Millisecond, 20 * time.Millisecond, 200 * time.Millisecond} {
			for _, v := range variants {
				b.Run(fmt.Sprintf("%s/%v/%s", holder, hold, v.name), func(b *testing.B) {
					path := filepath.Join(b.TempDir(), "x.lock")
					var hold1, release func() time.Time
					if holder == "process" {
						p := testproc.Start(b, append(os.Environ(), "STATEFILE_HELPER=handoff", "STATEFILE_PATH="+path))
						hold1 = func() time.Time {
							fmt.Fprintln(p.In, "lock")
							if line, _ := p.Out.ReadString('\n'); strings.TrimSpace(line) != "locked" {
								b.Fatalf("holder: %q", line)
							}
							return time.Time{}
						}
						release = func() time.Time {
							fmt.Fprintln(p.In, "release")
							line, _ := p.Out.ReadString('\n')
							ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
							if err != nil {
								b.Fatalf("holder: %q", line)
							}
							return time.Unix(0, ns)
						}
					} else {
						var unlock func()
						hold1 = func() time.Time {
							var err error
							if unlock, err = TryLock(path); err != nil {
								b.Fatal(err)
							}
							return time.Time{}
						}
						release = func() time.Time { t0 := time.Now(); unlock(); return t0 }
					}
					var delays []time.Duration
					tries := 0
					for b.Loop() {
						hold1()
						type got struct {
							at  time.Time
							err error
						}
						done := make(chan got, 1)
						started := make(chan struct{})
						go func() {
							ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
							defer cancel()
							close(started)
							unlock, err := v.lock(ctx, path, &tries)
							at := time.Now()
							if err == nil {
								unlock()
							}
							done <- got{at, err}
						}()
						<-started
						time.Sleep(hold) // the hold being measured, not a wait for a race
						t0 := release()
						g := <-done
						if g.err != nil {
							b.Fatal(g.err)
						}
						delays = append(delays, g.at.Sub(t0))
					}
					slices.Sort(delays)
					var sum time.Duration
					for _, d := range delays {
						sum += d
					}
					ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
					b.ReportMetric(ms(sum/time.Duration(len(delays))), "handoff-ms")
					b.ReportMetric(ms(delays[len(delays)/2]), "p50-ms")
					b.ReportMetric(ms(delays[len(delays)*9/10]), "p90-ms")
					if v.name != "old" {
						b.ReportMetric(float64(tries)/float64(len(delays)), "tries")
					}
					b.ReportMetric(0, "ns/op")
				})
			}
		}
	}
}
