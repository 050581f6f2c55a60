package remotejob_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

// worker is one machine running shared jobs the way a dispatch pass does,
// without commands: Sync, Expire, List, claim the oldest queued job it
// can, Beat, Settle done with the next stage's job.
type worker struct {
	m      *machine
	stages []string
	offset int // where in the queued list this machine starts claiming
	// idle is the pause after a pass that claimed nothing (a dispatcher's
	// poll interval); zero polls at once again.
	idle time.Duration
	// created says when each job's enqueue landed (the producer's clock,
	// the same process); nil to use the record's CreatedAt.
	created func(id string) (time.Time, bool)

	claims, settles, taken int
	latency                []time.Duration // enqueue landed -> claim landed
}

func stageIndex(stages []string, s string) int { return slices.Index(stages, s) }

// run loops until the remote holds total jobs, all terminal.
func (w *worker) run(ctx context.Context, total int) error {
	q := w.m.q
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w after %d claims", q.Host, err, w.claims)
		}
		if err := q.Sync(ctx); err != nil {
			return err
		}
		if _, err := q.Expire(ctx); err != nil {
			return err
		}
		list, err := q.List(ctx)
		if err != nil {
			return err
		}
		terminal := 0
		var queued []remotejob.Entry
		for _, e := range list {
			if e.Err != nil {
				return e.Err
			}
			switch {
			case e.Job.Status.Terminal():
				terminal++
			case e.Job.Status == gitstate.Queued:
				queued = append(queued, e)
			}
		}
		if len(list) == total && terminal == total {
			return nil
		}
		// Each machine starts at its own place in the oldest-first list:
		// all of them going for the oldest job makes every claim a race
		// that all but one lose (a push and a fetch each).
		if n := len(queued); n > 0 {
			k := w.offset % n
			queued = append(queued[k:], queued[:k]...)
		}
		claimed := false
		for _, e := range queued {
			c, err := q.Claim(ctx, e.Job.ID)
			if errors.Is(err, remotejob.ErrTaken) {
				w.taken++
				continue
			}
			if err != nil {
				return err
			}
			at := time.Now()
			w.claims++
			if t0, ok := w.createdAt(e.Job); ok {
				w.latency = append(w.latency, at.Sub(t0))
			}
			if err := q.Beat(ctx, c, "command"); err != nil {
				return err
			}
			end := remotejob.Ending{Status: gitstate.Done, Reason: "ran on " + q.Host}
			if i := stageIndex(w.stages, c.Stage); i+1 < len(w.stages) {
				next := job(c.Task, w.stages[i+1], 1)
				next.PrevCommit = c.Run
				end.Next = &next
			}
			if err := q.Settle(ctx, c, end); err != nil {
				return err
			}
			w.settles++
			claimed = true
			break
		}
		if !claimed && w.idle > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(w.idle):
			}
		}
	}
}

func (w *worker) createdAt(j *remotejob.Job) (time.Time, bool) {
	if w.created != nil {
		return w.created(j.ID)
	}
	return j.CreatedAt, true
}

// TestConcurrentMachines: 4 machines drain -remotejob.tasks tasks of 2
// stages each (the first stage's settle creates the second's job) at once;
// every job ends done, claimed once, advanced once. The default keeps
// go test ./... short; the races happen on every job whatever the count
// (the long run: -remotejob.tasks=40, 80 jobs, 5 min at load 20).
var concTasks = flag.Int("remotejob.tasks", 12, "tasks of TestConcurrentMachines")

func TestConcurrentMachines(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: jobs drained through 4 machines")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := refstoretest.NewRemote(t)
	url := r.FileURL()
	stages := []string{"build", "review"}
	tasks := *concTasks
	producer := newMachine(t, url, "producer")
	for i := range tasks {
		must(producer.q.Enqueue(ctx, job(fmt.Sprintf("task%02d", i), stages[0], 1)))(t)
	}
	ws := make([]*worker, 4)
	errs := make(chan error, len(ws))
	var wg sync.WaitGroup
	for i := range ws {
		ws[i] = &worker{m: newMachine(t, url, fmt.Sprintf("m%d", i)), stages: stages, offset: i}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ws[i].run(ctx, tasks*len(stages))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	h := checkInvariants(t, r)
	claims, settles := 0, 0
	for _, w := range ws {
		claims += w.claims
		settles += w.settles
		t.Logf("%s: %d claims, %d settles, %d lost claim races", w.m.q.Host, w.claims, w.settles, w.taken)
	}
	if len(h) != tasks*len(stages) || claims != len(h) || settles != len(h) {
		t.Fatalf("%d jobs on the remote, %d claims, %d settles; want %d of each", len(h), claims, settles, tasks*len(stages))
	}
	for id, vs := range h {
		last := vs[len(vs)-1]
		if last.Status != gitstate.Done {
			t.Errorf("job %s ended %s", id, last.Status)
		}
		if (last.Stage != stages[len(stages)-1]) != (last.Next != "") {
			t.Errorf("job %s (stage %s) next %q", id, last.Stage, last.Next)
		}
	}
}
