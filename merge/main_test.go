package merge_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/faultgit"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/merge"
)

// The test binary doubles as a merger in another process: one that may
// crash at a crash point (crash_test.go), one of many racing mergers, and a
// lease waiter for BenchmarkLeaseHandoff.
// MERGE_TEST_HELPER selects the mode; MERGE_TEST_REPO is the repository,
// MERGE_TEST_BRANCH the branch to merge into main and MERGE_TEST_REMOTE
// the remote to merge through ("" none).
const (
	helperEnv = "MERGE_TEST_HELPER"
	repoEnv   = "MERGE_TEST_REPO"
	branchEnv = "MERGE_TEST_BRANCH"
	remoteEnv = "MERGE_TEST_REMOTE"
)

func TestMain(m *testing.M) {
	if faultgit.Invoked() {
		// Started as git by the fault-injecting wrapper (worktree_test.go).
		os.Exit(faultgit.Main())
	}
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(runTests(m))
	case "merge":
		os.Exit(mergeHelper(false))
	case "race":
		os.Exit(mergeHelper(true))
	case "handoff":
		os.Exit(handoffHelper()) // bench_test.go
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// runTests runs the tests with a private, deterministic git environment:
// the merges under test run git with this process's environment, so no
// configuration of the machine may reach them.
func runTests(m *testing.M) int {
	cleanup, err := gittest.SetupProcess()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	return m.Run()
}

// author is the fixed signature helpers and tests use, so that a rebuilt
// merge commit has the same id.
var author = merge.Signature{Name: "Merge Bot", Email: "bot@example.invalid",
	When: time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)}

// mergeHelper merges $MERGE_TEST_BRANCH into main in $MERGE_TEST_REPO and
// prints "ok KIND". Racing, it first prints "ready" and waits for stdin to
// close, so that many helpers start their merges together.
func mergeHelper(race bool) int {
	repo, err := gitstate.Open(os.Getenv(repoEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	if race {
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
	}
	branch := os.Getenv(branchEnv)
	res, err := merge.New(repo).Merge(context.Background(), merge.Request{
		Branch: branch, Target: "main", Job: "job-" + branch, Author: author, Wait: 5 * time.Minute,
		Remote: os.Getenv(remoteEnv),
	})
	if err != nil {
		fmt.Println("error", strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	fmt.Println("ok", res.Kind)
	return 0
}

// helperCmd is a helper process of the given mode merging branch.
func helperCmd(f *fixture, mode, branch string, extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, repoEnv+"="+f.dir, branchEnv+"="+branch)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	return cmd
}

// fixture is a real repository with one commit on main, checked out clean
// in its main worktree, and an initialised state dir.
type fixture struct {
	t    testing.TB
	g    *gittest.Repo
	dir  string // main worktree
	repo *gitstate.Repo
	m    *merge.Merger
	tmp  string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	g := gittest.New(t)
	return openFixture(t, g, g.Dir)
}

func openFixture(t testing.TB, g *gittest.Repo, dir string) *fixture {
	t.Helper()
	repo, err := gitstate.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := gitstate.Init(repo.StateDir()); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, g: g, dir: dir, repo: repo, m: merge.New(repo), tmp: t.TempDir()}
}

// git runs git in the main worktree.
func (f *fixture) git(args ...string) string {
	f.t.Helper()
	return f.g.Git(f.dir, args...)
}

// gitIn runs git in dir with extra environment and optional stdin.
func (f *fixture) gitIn(dir string, env []string, stdin string, args ...string) string {
	f.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(f.g.Env(), env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		f.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func (f *fixture) rev(ref string) string {
	f.t.Helper()
	return f.git("rev-parse", "--verify", ref+"^{commit}")
}

// commitOn makes a commit on branch (created if missing) whose parent is
// parent, with files written, without touching any worktree or index.
func (f *fixture) commitOn(branch, parent string, files map[string]string) string {
	f.t.Helper()
	idx, err := os.CreateTemp(f.tmp, "index-")
	if err != nil {
		f.t.Fatal(err)
	}
	idx.Close()
	os.Remove(idx.Name())
	defer os.Remove(idx.Name())
	env := []string{"GIT_INDEX_FILE=" + idx.Name()}
	p := f.rev(parent)
	f.gitIn(f.dir, env, "", "read-tree", p)
	for path, content := range files {
		blob := f.gitIn(f.dir, env, content, "hash-object", "-w", "--stdin")
		f.gitIn(f.dir, env, "", "update-index", "--add", "--cacheinfo", "100644,"+blob+","+path)
	}
	tree := f.gitIn(f.dir, env, "", "write-tree")
	c := f.gitIn(f.dir, env, "", "commit-tree", tree, "-p", p, "-m", "commit on "+branch)
	f.git("update-ref", "refs/heads/"+branch, c)
	return c
}

// commitMain commits files on main through the main worktree (main is
// checked out there), so the worktree stays in step.
func (f *fixture) commitMain(files map[string]string) string {
	f.t.Helper()
	return f.g.Commit(f.dir, "main work", files)
}

// refs lists every ref with its value, and HEAD.
func (f *fixture) refs() string {
	f.t.Helper()
	return f.git("for-each-ref", "--format=%(refname) %(objectname)") + "\nHEAD " + f.git("rev-parse", "HEAD")
}

// reflog is the reflog file of ref ("" when there is none).
func (f *fixture) reflog(ref string) string {
	b, err := os.ReadFile(filepath.Join(f.repo.CommonDir, "logs", ref))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		f.t.Fatal(err)
	}
	return string(b)
}

func (f *fixture) isAncestor(a, b string) bool {
	f.t.Helper()
	ok, err := f.repo.IsAncestor(context.Background(), a, b)
	if err != nil {
		f.t.Fatal(err)
	}
	return ok
}

// parents lists the parents of commit.
func (f *fixture) parents(commit string) []string {
	f.t.Helper()
	fields := strings.Fields(f.git("rev-list", "--parents", "-n", "1", commit))
	return fields[1:]
}

// mergeCommits counts the commits reachable from ref with two parents
// whose message names branch as the merged branch.
func (f *fixture) mergeCommits(ref, branch string) int {
	f.t.Helper()
	out := f.git("rev-list", "--merges", "--fixed-strings", "--grep=Merge branch '"+branch+"' into", ref)
	if out == "" {
		return 0
	}
	return len(strings.Split(out, "\n"))
}

// status is git status --porcelain of the main worktree (untracked files
// included).
func (f *fixture) status() string {
	f.t.Helper()
	return f.git("status", "--porcelain")
}

// leaseFree fails the test unless target has no lease.
func (f *fixture) leaseFree(target string) {
	f.t.Helper()
	l, err := f.m.Leases.Get(target)
	if err != nil || l != nil {
		f.t.Fatalf("lease of %s after the merge: %+v, %v; want none", target, l, err)
	}
}

func (f *fixture) merge(req merge.Request) (*merge.Result, error) {
	if req.Target == "" {
		req.Target = "main"
	}
	if req.Wait == 0 {
		req.Wait = time.Minute
	}
	return f.m.Merge(context.Background(), req)
}

func (f *fixture) mustMerge(req merge.Request) *merge.Result {
	f.t.Helper()
	res, err := f.merge(req)
	if err != nil {
		f.t.Fatalf("merge %s: %v", req.Branch, err)
	}
	return res
}

// readLine reads one line from r, without its newline; who names the
// writer in a failure.
func readLine(t testing.TB, r *bufio.Reader, who string) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %q, %v", who, s, err)
	}
	return strings.TrimSpace(s)
}
