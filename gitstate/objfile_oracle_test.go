package gitstate

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/objfile"
	"golang.org/x/sys/unix"

	"github.com/orch-hooks/orch-hooks/gittest"
)

// looseParentsObjfile is looseParents with go-git's
// plumbing/format/objfile doing the inflating and the header: the
// candidate replacement measured in docs/PERFORMANCE.md ("Loose objects:
// go-git's objfile measured, not adopted"). It is not used: its
// package initialisers cost every process, while its only gain per
// object, a reused inflater, is looseParentsPooled's too without go-git,
// which is cheaper still (objfile also hashes what it inflates).
func (r *Repo) looseParentsObjfile(id string) ([]string, error) {
	f, err := os.Open(filepath.Join(r.CommonDir, "objects", id[:2], id[2:]))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotLoose
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	or, err := objfile.NewReader(bufio.NewReaderSize(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", id, err)
	}
	defer or.Close()
	if typ, _, err := or.Header(); err != nil || typ != plumbing.CommitObject {
		return nil, fmt.Errorf("object %s: not a commit", id)
	}
	br := bufio.NewReaderSize(or, 4096)
	return headerParents(id, br)
}

// looseHistory is a repository whose n commits are all loose.
func looseHistory(tb testing.TB, n int) (*Repo, []string) {
	tb.Helper()
	r := gittest.New(tb)
	ids := oracleHistory(tb, r.Dir, r.Env(), n, 5)
	packs, _ := filepath.Glob(filepath.Join(r.Dir, ".git", "objects", "pack", "*.pack"))
	for _, p := range packs {
		data, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		os.Remove(p)
		os.Remove(strings.TrimSuffix(p, ".pack") + ".idx")
		cmd := exec.Command("git", "unpack-objects", "-q")
		cmd.Dir, cmd.Env, cmd.Stdin = r.Dir, r.Env(), bytes.NewReader(data)
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("unpack-objects: %v\n%s", err, out)
		}
	}
	return &Repo{CommonDir: filepath.Join(r.Dir, ".git")}, ids
}

// looseParentsPooled is looseParents with its inflater reused through a
// sync.Pool (zlib.Resetter), as objfile does with its own: it tells how
// much of the difference per object is the inflater's allocation.
func (r *Repo) looseParentsPooled(id string) ([]string, error) {
	f, err := os.Open(filepath.Join(r.CommonDir, "objects", id[:2], id[2:]))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNotLoose
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	src := bufio.NewReaderSize(f, 4096)
	var z io.ReadCloser
	if pooled, ok := inflaters.Get().(io.ReadCloser); ok {
		if err := pooled.(zlib.Resetter).Reset(src, nil); err != nil {
			return nil, fmt.Errorf("object %s: %w", id, err)
		}
		z = pooled
	} else if z, err = zlib.NewReader(src); err != nil {
		return nil, fmt.Errorf("object %s: %w", id, err)
	}
	defer inflaters.Put(z)
	br := bufio.NewReaderSize(z, 4096)
	header, err := br.ReadString(0)
	if err != nil || !strings.HasPrefix(header, "commit ") {
		return nil, fmt.Errorf("object %s: not a commit", id)
	}
	return headerParents(id, br)
}

var inflaters sync.Pool

// BenchmarkLooseParents reads loose commits' parents with gitstate's
// reader, the same parsing over go-git's objfile, and gitstate's with a
// pooled inflater, interleaved in batches of 50 reads (cycling over 200
// commits) so that all three see the same machine. It reports the median
// batch per read: wall time and the thread's CPU time (steadier on a
// shared machine), and the ratios to gitstate's.
//
//	go test ./gitstate -run '^$' -bench LooseParents -benchtime 200x
func BenchmarkLooseParents(b *testing.B) {
	repo, ids := looseHistory(b, 200)
	readers := []struct {
		name string
		read func(string) ([]string, error)
	}{
		{"gitstate", repo.looseParents},
		{"objfile", repo.looseParentsObjfile},
		{"pooled", repo.looseParentsPooled},
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	threadCPU := func() time.Duration {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		return time.Duration(ts.Nano())
	}
	const batch = 50
	wall := make([][]float64, len(readers))
	cpu := make([][]float64, len(readers))
	next := 0
	for i := 0; i < b.N; i++ {
		for k := range readers {
			k := (k + i) % len(readers)
			t0, c0 := time.Now(), threadCPU()
			for j := 0; j < batch; j++ {
				if _, err := readers[k].read(ids[(next+j)%len(ids)]); err != nil {
					b.Fatal(err)
				}
			}
			wall[k] = append(wall[k], float64(time.Since(t0).Nanoseconds())/batch/1000)
			cpu[k] = append(cpu[k], float64((threadCPU()-c0).Nanoseconds())/batch/1000)
		}
		next += batch
	}
	median := func(x []float64) float64 {
		x = slices.Clone(x)
		slices.Sort(x)
		return x[len(x)/2]
	}
	for k, r := range readers {
		b.ReportMetric(median(wall[k]), r.name+"-µs/read")
		b.ReportMetric(median(cpu[k]), r.name+"-cpu-µs/read")
		if k > 0 {
			b.ReportMetric(median(cpu[k])/median(cpu[0]), r.name+"/gitstate-cpu")
		}
	}
	b.ReportMetric(0, "ns/op")
}
