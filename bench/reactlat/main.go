// Command reactlat measures how fast `orch-hooks watch` moves a pipeline
// along, for bench/run.sh (issue 15 item 2): it builds a repository with a
// three-stage pipeline of instant commands (a → b → c, each `date +%s%N`
// into a stamp file, so the stamp is when the stage's command ran), starts
// `ORCH watch --interval I` on it, and N times enqueues a task at a random
// phase of the interval and waits for its last stage to end done.
//
//	go run ./bench/reactlat -orch BIN -C DIR [-interval 2s] [-n 11] [-seed 1]
//
// It prints one line per sample, tab-separated, in milliseconds:
//
//	s2s MS   job done → the next stage's command running (a→b and b→c:
//	         the ended_at of the job, the stamp of the next one's command)
//	e2e MS   enqueue (before the enqueue command starts) → the last stage's
//	         ended_at
//
// and the parts of each s2s:
//
//	adv MS   the job's ended_at → the next job's created_at (its monitor
//	         advances)
//	claim MS the next job's created_at → its started_at (watch notices and
//	         dispatches; the new monitor starts and claims)
//	prep MS  started_at → the command's stamp (the monitor prepares the
//	         worktree and starts the command)
//
// Every time is the wall clock of this machine (the records' times and
// date(1)), so the figures are differences of one clock. The environment
// is passed on to watch (ORCH_WATCH_NOTIFY=0 measures the poll fallback).
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
)

func main() {
	orch := flag.String("orch", "orch-hooks", "the orch-hooks binary whose watch is measured")
	dir := flag.String("C", "", "a directory to create the repository in (must not exist)")
	interval := flag.Duration("interval", 2*time.Second, "watch --interval")
	n := flag.Int("n", 11, "pipelines")
	seed := flag.Uint64("seed", 1, "seed of the enqueue phases")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "reactlat: -C DIR is required")
		os.Exit(2)
	}
	if err := run(*orch, *dir, *interval, *n, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "reactlat:", err)
		os.Exit(1)
	}
}

const config = `max_concurrency = 1

[[stages]]
name = "a"
run = 'date +%%s%%N >"%[1]s/$ORCH_JOB_ID"'
next = "b"

[[stages]]
name = "b"
run = 'date +%%s%%N >"%[1]s/$ORCH_JOB_ID"'
next = "c"

[[stages]]
name = "c"
run = 'date +%%s%%N >"%[1]s/$ORCH_JOB_ID"'
`

func run(orch, dir string, interval time.Duration, n int, seed uint64) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	repo, stamps := filepath.Join(dir, "repo"), filepath.Join(dir, "stamps")
	if err := os.MkdirAll(stamps, 0o755); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"git", "init", "-q", "-b", "main", repo},
		{"git", "-C", repo, "commit", "-q", "--allow-empty", "-m", "init"},
		{orch, "-C", repo, "init"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(repo, "orch.toml"), fmt.Appendf(nil, config, stamps), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(dir, "watch.out"))
	if err != nil {
		return err
	}
	defer log.Close()
	watch := exec.Command(orch, "-C", repo, "watch", "--interval", interval.String())
	watch.Stdout, watch.Stderr = log, log
	if err := watch.Start(); err != nil {
		return err
	}
	defer func() {
		watch.Process.Signal(os.Interrupt)
		watch.Wait()
	}()
	jobs := filepath.Join(repo, ".git", "orch", "jobs")
	if err := waitFor(filepath.Join(repo, ".git", "orch", "watch.toml"), time.Minute); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range n {
		// A random phase of the interval: an interval-driven watch makes
		// a job wait from 0 to a whole interval.
		time.Sleep(time.Duration(rng.Int64N(int64(interval))))
		task := "t" + strconv.Itoa(i)
		t0 := time.Now()
		if out, err := exec.Command(orch, "-C", repo, "enqueue", "--task", task, "--branch", task, "--stage", "a").CombinedOutput(); err != nil {
			return fmt.Errorf("enqueue %s: %v: %s", task, err, out)
		}
		var js [3]*gitstate.Job
		for k, stage := range []string{"a", "b", "c"} {
			j, err := waitDone(jobs, task+"."+stage+".1.", 10*interval+time.Minute)
			if err != nil {
				return err
			}
			js[k] = j
		}
		for k := 1; k < 3; k++ {
			st, err := stamp(filepath.Join(stamps, js[k].ID))
			if err != nil {
				return err
			}
			fmt.Printf("s2s\t%.3f\n", ms(st.Sub(js[k-1].EndedAt)))
			fmt.Printf("adv\t%.3f\n", ms(js[k].CreatedAt.Sub(js[k-1].EndedAt)))
			fmt.Printf("claim\t%.3f\n", ms(js[k].StartedAt.Sub(js[k].CreatedAt)))
			fmt.Printf("prep\t%.3f\n", ms(st.Sub(js[k].StartedAt)))
		}
		fmt.Printf("e2e\t%.3f\n", ms(js[2].EndedAt.Sub(t0)))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// waitDone polls (every 2 ms) for the job whose id starts with prefix to
// end, and fails unless it ended done.
func waitDone(jobs, prefix string, limit time.Duration) (*gitstate.Job, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(jobs)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), prefix) || !strings.HasSuffix(e.Name(), ".toml") {
				continue
			}
			data, err := os.ReadFile(filepath.Join(jobs, e.Name()))
			if err != nil {
				continue
			}
			j, err := gitstate.DecodeJob(data)
			if err != nil || !j.Status.Terminal() {
				continue
			}
			if j.Status != gitstate.Done {
				return nil, fmt.Errorf("job %s ended %s: %s", j.ID, j.Status, j.Reason)
			}
			return j, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil, fmt.Errorf("no job %s* ended within %s", prefix, limit)
}

func waitFor(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("%s did not appear within %s", path, limit)
}

// stamp reads the time a stage's command wrote (date +%s%N).
func stamp(path string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %v", path, err)
	}
	return time.Unix(0, ns), nil
}
