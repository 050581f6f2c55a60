package remotejob_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
)

var (
	long       = flag.Bool("remotejob.long", false, "run TestSharedQueueLong: 4 machines against 1 on one http remote")
	longJobs   = flag.Int("remotejob.jobs", 40, "jobs per run of TestSharedQueueLong")
	longPeriod = flag.Duration("remotejob.period", 3*time.Second, "TestSharedQueueLong trickle mode: one enqueue per period")
	longIdle   = flag.Duration("remotejob.idle", 500*time.Millisecond, "TestSharedQueueLong: a machine's pause after a pass that found nothing to claim (its poll interval)")
)

// queueRun is the outcome of one run of the shared queue.
type queueRun struct {
	mode     string
	machines int
	jobs     int
	elapsed  time.Duration
	claims   int
	settles  int
	taken    int
	latency  []time.Duration
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// runQueue runs n machines against a fresh remote served over HTTP on
// loopback. drain: all jobs are enqueued before the machines start, and
// the run is timed from their start to the last settle. trickle: a
// producer enqueues one job per period while they run.
func runQueue(t *testing.T, mode string, n, jobs int) queueRun {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := refstoretest.NewRemote(t)
	url := r.Serve(t).URL
	producer := newMachine(t, url, "producer")
	enqueue := func(i int) {
		must(producer.q.Enqueue(ctx, job(fmt.Sprintf("job%03d", i), "build", 1)))(t)
	}
	if mode == "drain" {
		for i := range jobs {
			enqueue(i)
		}
	}
	ws := make([]*worker, n)
	for i := range ws {
		ws[i] = &worker{m: newMachine(t, url, fmt.Sprintf("m%d", i)), stages: []string{"build"}, offset: i, idle: *longIdle}
	}
	start := time.Now()
	if mode == "drain" {
		// Every job was waiting from the start: its latency is the
		// queue's drain order.
		for _, w := range ws {
			w.created = func(string) (time.Time, bool) { return start, true }
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	if mode == "trickle" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(*longPeriod)
			defer tick.Stop()
			for i := range jobs {
				if _, err := producer.q.Enqueue(ctx, job(fmt.Sprintf("job%03d", i), "build", 1)); err != nil {
					errs <- err
					return
				}
				<-tick.C
			}
		}()
	}
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(ctx, jobs); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkInvariants(t, r)
	out := queueRun{mode: mode, machines: n, jobs: jobs, elapsed: elapsed}
	for _, w := range ws {
		out.claims += w.claims
		out.settles += w.settles
		out.taken += w.taken
		out.latency = append(out.latency, w.latency...)
	}
	if out.claims != jobs || out.settles != jobs {
		t.Fatalf("%s with %d machines: %d claims, %d settles of %d jobs", mode, n, out.claims, out.settles, jobs)
	}
	return out
}

// TestSharedQueueLong measures the shared queue with 1 and with 4
// machines on one HTTP remote on loopback and prints a table (run with
// -remotejob.long; see docs/DISTRIBUTED.md "Measured: shared queue").
func TestSharedQueueLong(t *testing.T) {
	if !*long {
		t.Skip("a measurement: run with -remotejob.long")
	}
	var runs []queueRun
	for _, mode := range []string{"drain", "trickle"} {
		for _, n := range []int{1, 4} {
			runs = append(runs, runQueue(t, mode, n, *longJobs))
		}
	}
	w := os.Stdout
	fmt.Fprintf(w, "%-8s %8s %5s %9s %9s %10s %10s %10s %10s\n", "mode", "machines", "jobs", "elapsed", "claims/s", "settles/s", "claim p50", "claim p90", "lost races")
	for _, r := range runs {
		s := r.elapsed.Seconds()
		fmt.Fprintf(w, "%-8s %8d %5d %9s %9.2f %10.2f %10s %10s %10d\n", r.mode, r.machines, r.jobs, r.elapsed.Round(10*time.Millisecond),
			float64(r.claims)/s, float64(r.settles)/s, quantile(r.latency, 0.5).Round(time.Millisecond), quantile(r.latency, 0.9).Round(time.Millisecond), r.taken)
	}
	for i := 0; i+1 < len(runs); i += 2 {
		one, four := runs[i], runs[i+1]
		fmt.Fprintf(w, "%s, 4 vs 1: claims/s x%.2f, claim p50 x%.2f, claim p90 x%.2f\n", one.mode,
			(float64(four.claims)/four.elapsed.Seconds())/(float64(one.claims)/one.elapsed.Seconds()),
			float64(quantile(four.latency, 0.5))/float64(quantile(one.latency, 0.5)),
			float64(quantile(four.latency, 0.9))/float64(quantile(one.latency, 0.9)))
	}
}
