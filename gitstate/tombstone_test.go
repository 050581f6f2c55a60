package gitstate

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"
)

// collect is what gc does to one ended job: under its lock, the tombstone
// first, then the record.
func collect(t *testing.T, s *Store, id string) {
	t.Helper()
	unlock, err := s.Lock(context.Background(), id)
	if err != nil {
		t.Error(err)
		return
	}
	defer unlock()
	if err := s.Tombstone(id); err != nil {
		t.Error(err)
		return
	}
	if err := s.Remove(id); err != nil {
		t.Error(err)
	}
}

func endJob(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, won, err := s.Claim(context.Background(), id, []Status{Queued}, Cancelled, "test", nil); err != nil || !won {
		t.Errorf("cancel %s: won %v, %v", id, won, err)
	}
}

func TestCreateRefusesTombstonedID(t *testing.T) {
	s := newStore(t)
	j := queued("feat/a", "implement", 1)
	if _, created, err := s.Create(j); err != nil || !created {
		t.Fatal(created, err)
	}
	endJob(t, s, j.ID)
	collect(t, s, j.ID)

	got, created, err := s.Create(j)
	if !errors.Is(err, ErrCollected) || created || got != nil {
		t.Fatalf("Create of a collected id: %v, created %v, %v; want ErrCollected", got, created, err)
	}
	for _, p := range []string{s.RecordPath(j.ID), s.activePath(j.ID), s.LockPath("job-" + j.ID)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("refused Create wrote %s", p)
		}
	}
	// Tombstone is idempotent; another id is not collected.
	if err := s.Tombstone(j.ID); err != nil {
		t.Errorf("second tombstone: %v", err)
	}
	if c, err := s.Collected(JobID("feat/a", "implement", 2)); c || err != nil {
		t.Errorf("attempt 2 collected %v, %v", c, err)
	}
}

// Whatever sits under a tombstone's name keeps the id spent, and writing a
// tombstone never follows a symlink or blocks on a FIFO.
func TestTombstoneHostileEntries(t *testing.T) {
	s := newStore(t)
	if err := os.MkdirAll(s.TombstonePath("x")+"/..", 0o755); err != nil {
		t.Fatal(err)
	}
	target := s.RecordPath("victim")
	sym := JobID("a", "s", 1)
	if err := os.Symlink(target, s.TombstonePath(sym)); err != nil {
		t.Fatal(err)
	}
	fifo := JobID("b", "s", 1)
	if err := syscall.Mkfifo(s.TombstonePath(fifo), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	for _, id := range []string{sym, fifo} {
		if c, err := s.Collected(id); !c || err != nil {
			t.Errorf("Collected(%s) = %v, %v; want true", id, c, err)
		}
		if err := s.Tombstone(id); err == nil {
			t.Errorf("Tombstone(%s) over a non-regular file succeeded", id)
		}
		if _, _, err := s.Create(queued(map[string]string{sym: "a", fifo: "b"}[id], "s", 1)); !errors.Is(err, ErrCollected) {
			t.Errorf("Create(%s): %v, want ErrCollected", id, err)
		}
	}
	if _, err := os.Lstat(target); err == nil {
		t.Errorf("Tombstone wrote through a symlink to %s", target)
	}
}

// Creates racing a whole job life (create, end, collect): an id is created
// at most once, however they interleave.
func TestCreateRacesCollection(t *testing.T) {
	s := newStore(t)
	const n = 100
	for i := range n {
		j := queued("race", "s", i+1)
		var wg sync.WaitGroup
		var mu sync.Mutex
		creations := 0
		created := func(c bool) {
			mu.Lock()
			defer mu.Unlock()
			if c {
				creations++
			}
		}
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, c, err := s.Create(j)
				if err != nil && !errors.Is(err, ErrCollected) {
					t.Error(err)
				}
				created(c)
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.Create(j)
			if errors.Is(err, ErrCollected) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			created(c)
			cur, err := s.Get(j.ID)
			if err != nil {
				t.Error(err)
				return
			}
			if cur.Status == Queued {
				endJob(t, s, j.ID)
			}
			collect(t, s, j.ID)
		}()
		wg.Wait()
		if creations > 1 {
			t.Fatalf("job %s created %d times", j.ID, creations)
		}
	}
}
