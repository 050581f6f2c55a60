// Package remotejobtest checks the shared job queue's guarantees on a bare
// remote's own history, for the tests of remotejob and of its users.
package remotejobtest

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

// History reads every version of every job record on the bare remote in
// dir itself, oldest first per job, from `git log` of refs/orch/jobs/*:
// one for-each-ref, one log and one cat-file --batch. A job with a version
// that does not decode maps to nil.
func History(t testing.TB, dir string) map[string][]remotejob.Job {
	t.Helper()
	tips := map[string]string{}
	for _, line := range strings.Split(refstoretest.Git(t, dir, "for-each-ref", "--format=%(objectname) %(refname)", "refs/orch/jobs/"), "\n") {
		if id, ref, ok := strings.Cut(line, " "); ok {
			tips[strings.TrimPrefix(ref, "refs/orch/jobs/")] = id
		}
	}
	out := map[string][]remotejob.Job{}
	if len(tips) == 0 {
		return out
	}
	parents := map[string][]string{}
	for _, line := range strings.Split(refstoretest.Git(t, dir, "log", "--glob=refs/orch/jobs/*", "--format=%H %P"), "\n") {
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
	cmd.Dir = dir
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
			continue // no record.toml: undecodable
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

				out[name] = nil
				break
			}
			out[name] = append(out[name], j)
		}
	}
	return out
}

// Rules are what a caller's pipeline adds to the queue's own invariants.
type Rules struct {
	// Undecodable allows jobs with a version that does not decode (a
	// test wrote them); they are skipped.
	Undecodable bool
	// Settled: no job is left running (nothing lost once the machines
	// are done).
	Settled bool
	// NextFromDoneOnly: only a done job names a next job (a pipeline
	// advances on done alone).
	NextFromDoneOnly bool
	// FirstStage, when set: a job of any other stage exists only as the
	// next job some settle named.
	FirstStage string
}

// Check checks the history of every job on the remote in dir: created
// queued, claimed at most once (every running or ended version has the
// one run), nothing after a terminal version, every transition one of the
// state machine's, every next job named by one settle only and on the
// remote; and what rules add. It returns the histories.
func Check(t testing.TB, dir string, rules Rules) map[string][]remotejob.Job {
	t.Helper()
	h := History(t, dir)
	nexts := map[string]string{}
	for name, vs := range h {
		if vs == nil {
			if !rules.Undecodable {
				t.Errorf("job %s: a version of its record does not decode", name)
			}
			continue
		}
		fail := func(format string, args ...any) {
			t.Helper()
			var b strings.Builder
			for i, v := range vs {
				fmt.Fprintf(&b, "\n  %d: %s host=%s run=%s by=%s next=%s reason=%s", i, v.Status, v.Host, v.Run, v.EndedBy, v.Next, v.Reason)
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
		if rules.Settled && !last.Status.Terminal() && last.Status != gitstate.Queued {
			fail("lost: left %s", last.Status)
		}
		if last.Next != "" {
			if last.Status != gitstate.Done && (rules.NextFromDoneOnly || last.Status != gitstate.Failed) {
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
	if rules.FirstStage != "" {
		for name, vs := range h {
			if vs != nil && vs[0].Stage != rules.FirstStage && nexts[name] == "" {
				t.Errorf("job %s (stage %s) is on the remote, but no settle named it", name, vs[0].Stage)
			}
		}
	}
	return h
}
