// Command ancestry serves section 3 of bench/run.sh.
//
//	ancestry gen -shape linear|merges -n N   a git fast-import stream on stdout
//	ancestry time -C DIR -n RUNS             time the queries, one TSV line each
//
// gen writes N commits on refs/heads/main — a single line (linear), or
// blocks of four: two topic commits, one main commit, and the merge of the
// topic into main (merges: a quarter of the commits are merges) — and
// refs/heads/side, one commit forked from the 10th commit and never merged,
// dated after every other, and refs/heads/side-old, the same dated just
// after the fork.
//
// time asks two questions, each RUNS times after 3 warm-ups (5 times after
// 1 when one call of each takes over a second), alternating
// the two implementations: gitstate (gitstate.Open + Repo.IsAncestor, the
// repository opened anew for every call, as a command would) and
// `git merge-base --is-ancestor` as a process. "yes near tip": is main~4
// an ancestor of main; "no": is side an ancestor of main (the walk must go
// down to the fork, near the root, unless commit dates tell: with a
// commit-graph both git and gitstate answer "no" at once when side's
// corrected commit date is above main's); "no, old fork": is side-old an
// ancestor of main (dates do not help: both walk down to the fork). A wrong answer is an error. Each line:
// query, then median stddev min max in ms for gitstate, the same for git,
// then the expected answer.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ancestry gen|time ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		fs := flag.NewFlagSet("gen", flag.ExitOnError)
		shape := fs.String("shape", "linear", "linear or merges")
		n := fs.Int("n", 200000, "commits")
		fs.Parse(os.Args[2:])
		err = gen(*shape, *n)
	case "time":
		fs := flag.NewFlagSet("time", flag.ExitOnError)
		dir := fs.String("C", ".", "repository")
		n := fs.Int("n", 20, "runs")
		prof := fs.String("cpuprofile", "", "write a CPU profile of the gitstate calls to this file")
		only := fs.String("only", "", "run only the query with this name")
		fs.Parse(os.Args[2:])
		if *prof != "" {
			f, perr := os.Create(*prof)
			if perr != nil {
				err = perr
				break
			}
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		err = timeQueries(*dir, *n, *only)
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ancestry:", err)
		os.Exit(1)
	}
}

func gen(shape string, n int) error {
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer w.Flush()
	mark := 0
	// date: a commit's committer date, in seconds after 1700000000 (its
	// mark unless given).
	commitAt := func(ref string, from int, merge int, date int) int {
		mark++
		if date == 0 {
			date = mark
		}
		fmt.Fprintf(w, "commit %s\nmark :%d\ncommitter T <t@example.invalid> %d +0000\ndata 3\nc%d\n", ref, mark, 1700000000+date, mark%10)
		if from > 0 {
			fmt.Fprintf(w, "from :%d\n", from)
		}
		if merge > 0 {
			fmt.Fprintf(w, "merge :%d\n", merge)
		}
		w.WriteString("\n")
		return mark
	}
	commit := func(ref string, from int, merge int) int { return commitAt(ref, from, merge, 0) }
	tip := 0
	var fork int
	switch shape {
	case "linear":
		for mark < n {
			tip = commit("refs/heads/main", tip, 0)
			if mark == 10 {
				fork = tip
			}
		}
	case "merges":
		for mark < n {
			t1 := commit("refs/heads/topic", tip, 0)
			t2 := commit("refs/heads/topic", t1, 0)
			m := commit("refs/heads/main", tip, 0)
			tip = commit("refs/heads/main", m, t2)
			if fork == 0 && mark >= 10 {
				fork = tip
			}
		}
		fmt.Fprintf(w, "reset refs/heads/topic\nfrom :%d\n\n", tip)
	default:
		return fmt.Errorf("unknown shape %q", shape)
	}
	fmt.Fprintf(w, "reset refs/heads/main\nfrom :%d\n\n", tip)
	commit("refs/heads/side", fork, 0)
	// Dated just after the fork, as if made then: commit dates do not
	// tell it from main's history, so a "no" must walk down to the fork.
	commitAt("refs/heads/side-old", fork, 0, fork+1)
	return nil
}

func rev(dir, r string) (string, error) {
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--verify", r+"^{commit}").Output()
	return strings.TrimSpace(string(out)), err
}

func timeQueries(dir string, runs int, only string) error {
	ctx := context.Background()
	type query struct {
		name string
		a, b string
		want bool
	}
	var qs []query
	for _, q := range []struct {
		name, a, b string
		want       bool
	}{{"yes near tip", "main~4", "main", true}, {"no", "side", "main", false}, {"no, old fork", "side-old", "main", false}} {
		a, err := rev(dir, q.a)
		if err != nil {
			return fmt.Errorf("%s: %v", q.a, err)
		}
		b, err := rev(dir, q.b)
		if err != nil {
			return fmt.Errorf("%s: %v", q.b, err)
		}
		qs = append(qs, query{q.name, a, b, q.want})
	}
	orch := func(q query) (time.Duration, error) {
		t := time.Now()
		r, err := gitstate.Open(dir)
		if err != nil {
			return 0, err
		}
		ok, err := r.IsAncestor(ctx, q.a, q.b)
		d := time.Since(t)
		if err == nil && ok != q.want {
			err = fmt.Errorf("gitstate says %v for %s", ok, q.name)
		}
		return d, err
	}
	git := func(q query) (time.Duration, error) {
		t := time.Now()
		err := exec.Command("git", "-C", dir, "merge-base", "--is-ancestor", q.a, q.b).Run()
		d := time.Since(t)
		ok := err == nil
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			err = nil
		}
		if err == nil && ok != q.want {
			err = fmt.Errorf("git says %v for %s", ok, q.name)
		}
		return d, err
	}
	for _, q := range qs {
		if only != "" && q.name != only {
			continue
		}
		var od, gd []time.Duration
		warm, n := 3, runs
		for i := 0; i < warm+n; i++ {
			o, err := orch(q)
			if err != nil {
				return err
			}
			g, err := git(q)
			if err != nil {
				return err
			}
			if i == 0 && o+g > time.Second && n > 5 {
				// A walk of seconds: 1 warm-up and 5 runs keep the
				// suite within minutes; the spread says how much that costs.
				warm, n = 1, 5
			}
			if i >= warm {
				od, gd = append(od, o), append(gd, g)
			}
		}
		fmt.Printf("%s\t%s\t%s\t%v\n", q.name, stats(od), stats(gd), answer(q.want))
	}
	return nil
}

func answer(b bool) string {
	if b {
		return "ancestor"
	}
	return "not an ancestor"
}

// stats: median, stddev, min, max in ms, tab-separated.
func stats(ds []time.Duration) string {
	ms := make([]float64, len(ds))
	var sum float64
	for i, d := range ds {
		ms[i] = float64(d) / 1e6
		sum += ms[i]
	}
	sort.Float64s(ms)
	n := len(ms)
	med := ms[n/2]
	if n%2 == 0 {
		med = (ms[n/2-1] + ms[n/2]) / 2
	}
	mean := sum / float64(n)
	var v float64
	for _, x := range ms {
		v += (x - mean) * (x - mean)
	}
	sd := 0.0
	if n > 1 {
		sd = math.Sqrt(v / float64(n-1))
	}
	return fmt.Sprintf("%.3f\t%.3f\t%.3f\t%.3f", med, sd, ms[0], ms[n-1])
}
