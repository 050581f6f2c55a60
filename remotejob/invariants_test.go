package remotejob_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// history reads every version of every job record on the bare remote
// itself, oldest first per job, from `git log` of refs/orch/jobs/*: one
// for-each-ref, one log and one cat-file --batch.
func history(t testing.TB, r *refstoretest.Remote) map[string][]remotejob.Job {
	t.Helper()
	tips := map[string]string{}
	for _, line := range strings.Split(refstoretest.Git(t, r.Dir, "for-each-ref", "--format=%(objectname) %(refname)", "refs/orch/jobs/"), "\n") {
		if id, ref, ok := strings.Cut(line, " "); ok {
			tips[strings.TrimPrefix(ref, "refs/orch/jobs/")] = id
		}
	}
	out := map[string][]remotejob.Job{}
	if len(tips) == 0 {
		return out
	}
	parents := map[string][]string{}
	for _, line := range strings.Split(refstoretest.Git(t, r.Dir, "log", "--glob=refs/orch/jobs/*", "--format=%H %P"), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			parents[f[0]] = f[1:]
		}
	}
	chains := map[string][]string{}
	var all []string
	for name, tip := range tips {
		var chain []string
		for c := tip; c != ""; {
			chain = append([]string{c}, chain...)
			ps := parents[c]
			if len(ps) > 1 {
				t.Errorf("job %s: version %s has %d parents", name, c, len(ps))
			}
			c = ""
			if len(ps) > 0 {
				c = ps[0]
			}
		}
		chains[name] = chain
		all = append(all, chain...)
	}
	cmd := exec.Command("git", "cat-file", "--batch")
	cmd.Dir = r.Dir
	cmd.Stdin = strings.NewReader(strings.Join(all, ":record.toml\n") + ":record.toml\n")
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("cat-file --batch: %v", err)
	}
	rd := bufio.NewReader(bytes.NewReader(raw))
	data := map[string][]byte{}
	for _, c := range all {
		hdr, err := rd.ReadString('\n')
		f := strings.Fields(hdr)
		if err == nil && len(f) == 2 && f[1] == "missing" {
			continue // no record.toml: undecodable, as a test made it
		}
		if err != nil || len(f) != 3 {
			t.Fatalf("cat-file --batch on %s: %q %v", c, hdr, err)
		}
		n, _ := strconv.Atoi(f[2])
		b := make([]byte, n+1)
		if _, err := io.ReadFull(rd, b); err != nil {
			t.Fatal(err)
		}
		data[c] = b[:n]
	}
	for name, chain := range chains {
		for _, c := range chain {
			var j remotejob.Job
			if _, err := statefile.DecodeTOML(data[c], &j); data[c] == nil || err != nil {
				// An undecodable record is a test's doing; not a job.
				out[name] = nil
				break
			}
			out[name] = append(out[name], j)
		}
	}
	return out
}

// checkInvariants checks the history of every job on the remote: it was
// created queued once, claimed at most once (every running version has
// the one run), nothing follows a terminal version, and every next job
// was named by one settle only and exists. It returns the histories.
func checkInvariants(t testing.TB, r *refstoretest.Remote) map[string][]remotejob.Job {
	t.Helper()
	h := history(t, r)
	nexts := map[string]string{}
	for name, vs := range h {
		if vs == nil {
			continue
		}
		fail := func(format string, args ...any) {
			t.Helper()
			var b strings.Builder
			for i, v := range vs {
				fmt.Fprintf(&b, "\n  %d: %s host=%s run=%s by=%s next=%s", i, v.Status, v.Host, v.Run, v.EndedBy, v.Next)
			}
			t.Errorf("job %s: "+format+"; history:%s", append([]any{name}, append(args, b.String())...)...)
		}
		if vs[0].Status != gitstate.Queued {
			fail("created %s, not queued", vs[0].Status)
		}
		run := ""
		for i, v := range vs {
			if v.ID != name {
				fail("version %d is of job %q", i, v.ID)
			}
			if i > 0 {
				prev := vs[i-1]
				if prev.Status.Terminal() {
					fail("version %d follows a terminal version", i)
				}
				if !gitstate.CanTransition(prev.Status, v.Status) && !(prev.Status == gitstate.Running && v.Status == gitstate.Running) {
					fail("version %d: %s -> %s", i, prev.Status, v.Status)
				}
			}
			if v.Status == gitstate.Running || (v.Status.Terminal() && v.Run != "") {
				if run == "" {
					run = v.Run
				} else if v.Run != run {
					fail("claimed twice: runs %s and %s", run, v.Run)
				}
			}
		}
		last := vs[len(vs)-1]
		if last.Next != "" {
			if last.Status != gitstate.Done && last.Status != gitstate.Failed {
				fail("names next %s but is %s", last.Next, last.Status)
			}
			if other, dup := nexts[last.Next]; dup {
				fail("next %s named by %s too", last.Next, other)
			}
			nexts[last.Next] = name
			if _, ok := h[last.Next]; !ok {
				fail("next %s is not on the remote", last.Next)
			}
		}
	}
	return h
}
