package merge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/merge"
	"github.com/orch-hooks/orch-hooks/procid"
)

// reportLatencies reports the median and the 99th percentile of ds.
func reportLatencies(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(ds[len(ds)/2]), "p50-µs")
	b.ReportMetric(us(ds[(len(ds)-1)*99/100]), "p99-µs")
}

func benchLeaseDir(b *testing.B) string {
	dir := filepath.Join(b.TempDir(), "orch")
	if err := gitstate.Init(dir); err != nil {
		b.Fatal(err)
	}
	return dir
}

// handoffHelper is a waiter in another process: for each line on stdin it
// checks the lease of main is busy, prints "busy", blocks in Acquire, and
// prints the time (Unix ns) at which it holds the lease; then it releases
// it and prints "released".
func handoffHelper() int {
	m := lease.Open(os.Getenv(repoEnv))
	self, err := procid.Self()
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	req := lease.Request{Holder: "waiter", Owner: self, TTL: time.Hour}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if _, err := m.TryAcquire(context.Background(), "main", req); !errors.Is(err, lease.ErrBusy) {
			fmt.Println("error: not busy:", err)
			return 1
		}
		fmt.Println("busy")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		l, err := m.Acquire(ctx, "main", req)
		cancel()
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println(time.Now().UnixNano())
		if err := m.Release(context.Background(), "main", l.Token); err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("released")
	}
	return 0
}

// BenchmarkLeaseHandoff measures the time from a Release to a blocked
// waiter holding the lease. hold is how long the holder keeps the lease
// after the waiter found it busy (0: at once; 20ms: long enough for the
// waiter's poll to have backed off to its maximum).
func BenchmarkLeaseHandoff(b *testing.B) {
	for _, hold := range []time.Duration{0, 20 * time.Millisecond} {
		b.Run(fmt.Sprintf("goroutine/hold=%s", hold), func(b *testing.B) { benchHandoffGoroutine(b, hold) })
		b.Run(fmt.Sprintf("process/hold=%s", hold), func(b *testing.B) { benchHandoffProcess(b, hold) })
	}
}

func benchHandoffGoroutine(b *testing.B, hold time.Duration) {
	m := lease.Open(benchLeaseDir(b))
	self, _ := procid.Self()
	ctx := context.Background()
	holder := lease.Request{Holder: "holder", Owner: self, TTL: time.Hour}
	waiter := lease.Request{Holder: "waiter", Owner: self, TTL: time.Hour}
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := m.TryAcquire(ctx, "main", holder)
		if err != nil {
			b.Fatal(err)
		}
		busy := make(chan struct{})
		got := make(chan time.Time, 1)
		go func() {
			if _, err := m.TryAcquire(ctx, "main", waiter); !errors.Is(err, lease.ErrBusy) {
				b.Error("waiter: not busy:", err)
			}
			close(busy)
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			wl, err := m.Acquire(wctx, "main", waiter)
			at := time.Now()
			if err != nil {
				b.Error(err)
				got <- at
				return
			}
			m.Release(ctx, "main", wl.Token)
			got <- at
		}()
		<-busy
		if hold > 0 {
			time.Sleep(hold) // the holder's work, not synchronisation
		}
		released := time.Now()
		if err := m.Release(ctx, "main", l.Token); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, (<-got).Sub(released))
	}
	b.StopTimer()
	reportLatencies(b, ds)
}

func benchHandoffProcess(b *testing.B, hold time.Duration) {
	dir := benchLeaseDir(b)
	m := lease.Open(dir)
	self, _ := procid.Self()
	ctx := context.Background()
	holder := lease.Request{Holder: "holder", Owner: self, TTL: time.Hour}
	f := &fixture{t: b, dir: dir}
	cmd := helperCmd(f, "handoff", "")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	out := bufio.NewReader(pipe)
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := m.TryAcquire(ctx, "main", holder)
		if err != nil {
			b.Fatal(err)
		}
		io.WriteString(stdin, "go\n")
		if s := readLine(b, out, "waiter"); s != "busy" {
			b.Fatalf("waiter: %q", s)
		}
		if hold > 0 {
			time.Sleep(hold) // the holder's work, not synchronisation
		}
		released := time.Now()
		if err := m.Release(ctx, "main", l.Token); err != nil {
			b.Fatal(err)
		}
		s := readLine(b, out, "waiter")
		ns, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("waiter: %q", s)
		}
		ds = append(ds, time.Unix(0, ns).Sub(released))
		b.StopTimer()
		if s := readLine(b, out, "waiter"); s != "released" {
			b.Fatalf("waiter: %q", s)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportLatencies(b, ds)
}

// BenchmarkMerge16 runs 16 concurrent mergers, each merging its own branch
// into main (one fast-forward and 15 real merges, serialised by the lease),
// and reports merges per second.
func BenchmarkMerge16(b *testing.B) {
	const n = 16
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		f := newFixture(b)
		for j := 0; j < n; j++ {
			f.commitOn(fmt.Sprintf("feat/%02d", j), "main", map[string]string{fmt.Sprintf("f%02d.txt", j): "x\n"})
		}
		repos := make([]*gitstate.Repo, n)
		for j := range repos {
			r, err := gitstate.Open(f.dir)
			if err != nil {
				b.Fatal(err)
			}
			repos[j] = r
		}
		var wg sync.WaitGroup
		errs := make(chan error, n)
		b.StartTimer()
		start := time.Now()
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := merge.New(repos[j]).Merge(context.Background(), merge.Request{
					Branch: fmt.Sprintf("feat/%02d", j), Target: "main", Wait: 10 * time.Minute,
				})
				errs <- err
			}()
		}
		wg.Wait()
		total += time.Since(start)
		b.StopTimer()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		if got := f.git("rev-list", "--count", "--first-parent", "main"); got != strconv.Itoa(n+1) {
			b.Fatalf("main's first-parent chain has %s commits, want %d", got, n+1)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "merges/s")
}
