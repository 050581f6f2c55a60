// Command lockbench times statefile's lock through its exported API only
// (Lock, TryLock), so that the same source builds in a tree from before the
// lock changed and in one from after (bench/compare.sh builds it in both).
//
//	lockbench [-n 20000] [-handoffs 40] [-hold 20ms]
//
// It prints one line per case, tab-separated: name, wall ns per operation,
// CPU ns (user + system, the whole process) per operation, and for the
// hand-off the median and p90 delay in µs:
//
//	trylock-free   TryLock of a free lock and its unlock
//	trylock-held   one TryLock of a lock held by another open file (what a
//	               waiter pays per poll)
//	lock-free      Lock of a free lock and its unlock
//	handoff        Lock of a lock another goroutine holds for -hold and then
//	               releases: the delay from its unlock to the waiter
//	               holding it; CPU is per wait (the waiter's polls)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/orch-hooks/orch-hooks/statefile"
)

func main() {
	n := flag.Int("n", 20000, "iterations of the loop cases")
	handoffs := flag.Int("handoffs", 40, "hand-offs")
	hold := flag.Duration("hold", 20*time.Millisecond, "how long the holder holds before releasing")
	flag.Parse()
	dir, err := os.MkdirTemp("", "lockbench")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "x.lock")
	ctx := context.Background()

	loop("trylock-free", *n, func() {
		unlock, err := statefile.TryLock(path)
		if err != nil {
			fail(err)
		}
		unlock()
	})
	loop("lock-free", *n, func() {
		unlock, err := statefile.Lock(ctx, path)
		if err != nil {
			fail(err)
		}
		unlock()
	})
	held, err := statefile.TryLock(path)
	if err != nil {
		fail(err)
	}
	loop("trylock-held", *n, func() {
		if _, err := statefile.TryLock(path); err == nil {
			fail(errors.New("took a held lock"))
		}
	})
	held()

	// The hand-off: this goroutine holds, another waits in Lock.
	var delays []time.Duration
	cpu0 := cpuTime()
	for range *handoffs {
		unlock, err := statefile.TryLock(path)
		if err != nil {
			fail(err)
		}
		got := make(chan time.Time, 1)
		started := make(chan struct{})
		go func() {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			close(started)
			u, err := statefile.Lock(c, path)
			at := time.Now()
			if err != nil {
				fail(err)
			}
			u()
			got <- at
		}()
		<-started
		time.Sleep(*hold) // the hold being measured, not a wait for a race
		t0 := time.Now()
		unlock()
		delays = append(delays, (<-got).Sub(t0))
	}
	cpu := cpuTime() - cpu0
	slices.Sort(delays)
	fmt.Printf("handoff-%v\t-\t%d\t%.1f\t%.1f\n", *hold, cpu.Nanoseconds()/int64(*handoffs),
		float64(delays[len(delays)/2])/1e3, float64(delays[len(delays)*9/10])/1e3)
}

// loop runs f n times and prints its wall and CPU time per call.
func loop(name string, n int, f func()) {
	for range n / 10 { // warm up
		f()
	}
	cpu0, t0 := cpuTime(), time.Now()
	for range n {
		f()
	}
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	fmt.Printf("%s\t%d\t%d\t-\t-\n", name, wall.Nanoseconds()/int64(n), cpu.Nanoseconds()/int64(n))
}

// cpuTime is the CPU time (user and system) this process has used: on a
// shared machine, less moved by other work than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "lockbench:", err)
	os.Exit(1)
}
