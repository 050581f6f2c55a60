package merge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/merge"
)

// runCrashing runs a helper merging branch into main with the crash point
// armed and checks that it died of SIGKILL there.
func runCrashing(t *testing.T, f *fixture, branch, point string, extraEnv ...string) {
	t.Helper()
	cmd := helperCmd(f, "merge", branch, append([]string{crashpoint.EnvVar + "=" + point}, extraEnv...)...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper with %s=%s: %v, output %q; want it killed", crashpoint.EnvVar, point, err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper with %s=%s: %v, output %q; want SIGKILL at the crash point", crashpoint.EnvVar, point, err, out)
	}
}

// A merger killed at any step: the lease it left is stale (its owner is
// dead), reclaim frees it, and running the merge again converges on the
// same target with exactly one merge commit, the target's checkout in step
// and the lease free.
func TestCrashAndRerunConverges(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"lease.acquired", "merge.commit_tree", "merge.update_ref", "lease.release"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			b := f.commitOn("feat/x", "main", map[string]string{"x.txt": "x\n"})
			tgt := f.commitMain(map[string]string{"m.txt": "m\n"})

			runCrashing(t, f, "feat/x", point)

			l, err := f.m.Leases.Get("main")
			if err != nil || l == nil {
				t.Fatalf("lease after a crash at %s: %+v, %v; want the dead merger's", point, l, err)
			}
			wrote := point == "merge.update_ref" || point == "lease.release"
			if moved := f.rev("main") != tgt; moved != wrote {
				t.Fatalf("crash at %s: main moved = %v, want %v", point, moved, wrote)
			}
			reclaimed, errs := f.m.Leases.ReclaimStale(context.Background(), false)
			if diff := cmp.Diff([]string{"main"}, reclaimed); diff != "" || len(errs) != 0 {
				t.Fatalf("ReclaimStale after a crash at %s: %v, %v; want [main]", point, reclaimed, errs)
			}
			f.leaseFree("main")

			res := f.mustMerge(merge.Request{Branch: "feat/x", Job: "job-feat/x", Author: author})
			want := merge.Merged
			if wrote {
				want = merge.AlreadyMerged
			}
			if res.Kind != want {
				t.Fatalf("re-run after a crash at %s: %s, want %s", point, res.Kind, want)
			}
			head := f.rev("main")
			if !f.isAncestor(b, head) || !f.isAncestor(tgt, head) {
				t.Fatalf("main %s does not contain the branch and the old target", head)
			}
			if n := f.mergeCommits("main", "feat/x"); n != 1 {
				t.Fatalf("%d merge commits of feat/x, want 1", n)
			}
			if diff := cmp.Diff([]string{tgt, b}, f.parents(head)); diff != "" {
				t.Fatalf("main's parents (-want +got):\n%s", diff)
			}
			if f.rev("HEAD") != head {
				t.Fatalf("HEAD %s, main %s", f.rev("HEAD"), head)
			}
			if st := f.status(); st != "" {
				t.Fatalf("checkout of main after the re-run:\n%s", st)
			}
			f.leaseFree("main")
			if _, err := os.Stat(filepath.Join(f.repo.StateDir(), "merges", "main.toml")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pending worktree sync left behind: %v", err)
			}
			// And once more: nothing to do.
			if again := f.mustMerge(merge.Request{Branch: "feat/x", Author: author}); again.Kind != merge.AlreadyMerged || f.rev("main") != head {
				t.Fatalf("third run: %+v", again)
			}
		})
	}
}

// A crash right after a push landed: the re-run finds the remote merged.
func TestCrashAfterPushConverges(t *testing.T) {
	t.Parallel()
	f, bare := remoteFixture(t)
	runCrashing(t, f, "feat/r", "merge.push", remoteEnv+"=origin")
	pushed := f.g.Git(bare, "rev-parse", "main")
	if !f.isAncestor(f.rev("feat/r"), pushed) {
		t.Fatal("crash at merge.push: the push did not land")
	}
	if reclaimed, errs := f.m.Leases.ReclaimStale(context.Background(), false); !cmp.Equal(reclaimed, []string{"main"}) || len(errs) != 0 {
		t.Fatalf("ReclaimStale: %v, %v; want [main]", reclaimed, errs)
	}
	res := f.mustMerge(merge.Request{Branch: "feat/r", Remote: "origin", Job: "job-feat/r", Author: author})
	if res.Kind != merge.AlreadyMerged || res.Pushed {
		t.Fatalf("re-run after a crash at merge.push: %+v, want already merged", res)
	}
	if got := f.g.Git(bare, "rev-parse", "main"); got != pushed {
		t.Fatalf("origin's main moved to %s on the re-run", got)
	}
	if n := len(strings.Fields(f.g.Git(bare, "rev-list", "--merges", "main"))); n != 1 {
		t.Fatalf("%d merge commits on origin's main, want 1", n)
	}
	f.leaseFree("main")
}

// 16 processes each merge their own branch into main at once: every branch
// lands exactly once and no update is lost.
func TestSixteenMergersRace(t *testing.T) {
	t.Parallel()
	const n = 16
	f := newFixture(t)
	start := f.rev("main")
	tips := map[string]string{}
	for i := 0; i < n; i++ {
		br := fmt.Sprintf("feat/%02d", i)
		tips[br] = f.commitOn(br, "main", map[string]string{fmt.Sprintf("f%02d.txt", i): br + "\n"})
	}
	gate, release, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	type racer struct {
		branch string
		cmd    *exec.Cmd
		out    *bufio.Reader
	}
	var racers []racer
	for br := range tips {
		cmd := helperCmd(f, "race", br)
		cmd.Stdin = gate
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		racers = append(racers, racer{br, cmd, bufio.NewReader(pipe)})
	}
	gate.Close()
	for _, r := range racers {
		if s := readLine(t, r.out, r.branch); s != "ready" {
			t.Fatalf("%s: %q, want ready", r.branch, s)
		}
	}
	release.Close() // every racer's stdin ends at once: go
	kinds := map[string]int{}
	for _, r := range racers {
		s := readLine(t, r.out, r.branch)
		if err := r.cmd.Wait(); err != nil {
			t.Fatalf("%s: %v (%s)", r.branch, err, s)
		}
		kind, ok := strings.CutPrefix(s, "ok ")
		if !ok {
			t.Fatalf("%s: %s", r.branch, s)
		}
		kinds[kind]++
	}
	// Every branch started from the same main: the first to land
	// fast-forwards, every other one merges.
	if diff := cmp.Diff(map[string]int{string(merge.FastForward): 1, string(merge.Merged): n - 1}, kinds); diff != "" {
		t.Fatalf("results (-want +got):\n%s", diff)
	}
	head := f.rev("main")
	chain := strings.Split(f.git("rev-list", "--first-parent", head, "^"+start), "\n")
	if len(chain) != n {
		t.Fatalf("%d commits on main's first-parent chain since the start, want %d (15 merges and the fast-forwarded tip)", len(chain), n)
	}
	ffed := 0
	for br, tip := range tips {
		if !f.isAncestor(tip, head) {
			t.Errorf("%s (%s) is not in main", br, tip)
		}
		merges := f.mergeCommits("main", br)
		onChain := 0
		for _, c := range chain {
			if c == tip {
				onChain++
			}
		}
		ffed += onChain
		if merges+onChain != 1 {
			t.Errorf("%s: %d merge commits, fast-forwarded %d times; want landed exactly once", br, merges, onChain)
		}
	}
	if ffed != 1 {
		t.Errorf("%d branches fast-forwarded, want 1", ffed)
	}
	var want []string
	for i := 0; i < n; i++ {
		want = append(want, fmt.Sprintf("f%02d.txt", i))
	}
	files := strings.Split(f.git("ls-tree", "--name-only", head), "\n")
	sort.Strings(files)
	if diff := cmp.Diff(want, files); diff != "" {
		t.Fatalf("main's tree (-want +got):\n%s", diff)
	}
	if f.rev("HEAD") != head || f.status() != "" {
		t.Fatalf("checkout of main: HEAD %s, status %q; want %s, clean", f.rev("HEAD"), f.status(), head)
	}
	f.leaseFree("main")
	if got := strings.TrimSpace(readFileT(t, filepath.Join(f.repo.StateDir(), "leases", "main.seq"))); got != fmt.Sprint(n) {
		t.Errorf("token counter %s after %d merges, want %d", got, n, n)
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
