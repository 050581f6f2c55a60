package pipeline_test

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/pipeline"
)

func collected(t *testing.T, env *pipeline.Env, id string) bool {
	t.Helper()
	c, err := env.Store.Collected(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// gc then enqueue of the same job: refused, nothing created, nothing runs
// (issue 12: feat-g.implement.1 ran twice).
func TestGCTombstoneRefusesRerun(t *testing.T) {
	_, env := newRepo(t, gcToml)
	a := runDone(t, env, "feat/a", "feat/a", 1)

	gc(t, env, 0, true, false)
	if collected(t, env, a.ID) || exists(t, env.Store.TombstonePath(a.ID)) {
		t.Fatalf("gc --dry-run wrote a tombstone for %s", a.ID)
	}
	if rep := gc(t, env, 0, false, false); len(rep.Jobs) != 1 {
		t.Fatalf("gc collected %v, want %s", rep.Jobs, a.ID)
	}
	if !collected(t, env, a.ID) {
		t.Fatalf("gc left no tombstone for %s", a.ID)
	}
	if fi, err := os.Stat(env.Store.TombstonePath(a.ID)); err != nil || fi.Size() != 0 || !fi.Mode().IsRegular() {
		t.Fatalf("tombstone: %v, %v; want an empty regular file", fi, err)
	}

	j, created, err := env.Enqueue(pipeline.Request{Task: "feat/a", Branch: "feat/a", Stage: "work"})
	if err == nil || created || j != nil {
		t.Fatalf("enqueue of collected %s: job %v, created %v, err %v; want refused", a.ID, j, created, err)
	}
	var ce *pipeline.CollectedError
	if !errors.As(err, &ce) || !errors.Is(err, gitstate.ErrCollected) || !errors.Is(err, pipeline.ErrWrongStatus) {
		t.Fatalf("enqueue error %v (%T): want a CollectedError, ErrCollected and ErrWrongStatus", err, err)
	}
	if ce.ID != a.ID || ce.Free != 2 || !strings.Contains(err.Error(), "--attempt 2") {
		t.Errorf("CollectedError %+v: %v; want id %s, free attempt 2 named", ce, err, a.ID)
	}
	if _, err := env.Store.Get(a.ID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("refused enqueue left a record: %v", err)
	}
	if l, err := env.Store.Active(); err != nil || len(l.Jobs) != 0 {
		t.Errorf("active jobs after a refused enqueue: %v, %v", l.Jobs, err)
	}
	for _, p := range []string{env.Store.LockPath("job-" + a.ID), env.Store.LogPath(a.ID)} {
		if exists(t, p) {
			t.Errorf("refused enqueue wrote %s", p)
		}
	}
	// The attempt the error names is free.
	if j, created, err := env.Enqueue(pipeline.Request{Task: "feat/a", Branch: "feat/a", Stage: "work", Attempt: ce.Free}); err != nil || !created {
		t.Errorf("enqueue attempt %d: %v, created %v", ce.Free, err, created)
	} else if j.Attempt != 2 {
		t.Errorf("attempt %d, want 2", j.Attempt)
	}
}

// A done job whose next job was collected before it advanced: the advance,
// the reaper's repair and gc all take the tombstone for "exists".
func TestAdvanceIntoCollectedJob(t *testing.T) {
	_, env := newRepo(t, gcToml)
	p, _, err := env.Enqueue(pipeline.Request{Branch: "feat/a", Stage: "prep"})
	if err != nil {
		t.Fatal(err)
	}
	w := enqueue(t, env, "feat/a", "feat/a", 1)
	if want := gitstate.JobID(p.Task, "work", p.Attempt); w.ID != want {
		t.Fatalf("set-up: work job %s, prep advances to %s", w.ID, want)
	}
	cancel(t, env, w.ID)
	gc(t, env, 0, false, false)
	if !collected(t, env, w.ID) {
		t.Fatalf("set-up: %s not collected", w.ID)
	}

	res, err := env.Run(context.Background(), p.ID, pipeline.RunOptions{Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res.Job.Status != gitstate.Done || res.Job.NextJob != w.ID {
		t.Fatalf("prep ended %s, next %q", res.Job.Status, res.Job.NextJob)
	}
	if res.Next != nil {
		t.Errorf("advance recreated collected job %s: %+v", w.ID, res.Next)
	}
	if _, err := env.Store.Get(w.ID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("collected job %s has a record again: %v", w.ID, err)
	}
	if env.NeedsAdvance(res.Job) {
		t.Errorf("NeedsAdvance(%s) is true: its next job existed and was collected", p.ID)
	}
	next, created, err := env.RepairAdvance(context.Background(), res.Job)
	if err != nil || created || next != nil {
		t.Errorf("RepairAdvance: next %v, created %v, %v; want nothing done", next, created, err)
	}
	if l, err := env.Store.PendingAdvances(); err != nil || len(l.Jobs) != 0 {
		t.Errorf("pending advances: %v, %v; want none", l.Jobs, err)
	}
	// Nothing holds the done job back from gc.
	gc(t, env, 0, false, false)
	if !collected(t, env, p.ID) {
		t.Errorf("gc kept done job %s", p.ID)
	}
}

// Retry of attempt 1 when attempt 2 was collected: attempt 3, a new job;
// again: the same attempt 3.
func TestRetrySkipsCollectedAttempt(t *testing.T) {
	_, env := newRepo(t, gcToml)
	a1 := enqueue(t, env, "feat/a", "feat/a", 1)
	a2 := enqueue(t, env, "feat/a", "feat/a", 2)
	cancel(t, env, a2.ID)
	gc(t, env, 0, false, false)
	if !collected(t, env, a2.ID) {
		t.Fatalf("set-up: %s not collected", a2.ID)
	}
	cancel(t, env, a1.ID)

	j, created, err := env.Retry(a1.ID)
	if err != nil || !created {
		t.Fatalf("retry %s: %v, created %v", a1.ID, err, created)
	}
	if j.Attempt != 3 || j.ID != gitstate.JobID("feat/a", "work", 3) {
		t.Errorf("retry made %s (attempt %d), want attempt 3", j.ID, j.Attempt)
	}
	if _, err := env.Store.Get(a2.ID); !errors.Is(err, gitstate.ErrNotFound) {
		t.Errorf("retry recreated collected %s: %v", a2.ID, err)
	}
	again, created, err := env.Retry(a1.ID)
	if err != nil || created || again.ID != j.ID {
		t.Errorf("retry again: %v, created %v, %v; want %s, not created", again, created, err, j.ID)
	}
}
