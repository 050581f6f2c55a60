package refstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
)

// BenchmarkCAS measures one compare-and-swap write of a record: a new
// version prepared and swapped in expecting the last one. "local" is the
// same swap done on this machine's refs with git update-ref (what local
// mode pays for a ref CAS), the baseline the remote transports compare to
// in the same run. "read" is one Fetch+Get after another machine's write
// (the read side of every claim).
func BenchmarkCAS(b *testing.B) {
	ctx := context.Background()
	b.Run("local-update-ref", func(b *testing.B) {
		dir := refstoretest.NewMachine(b)
		s, _ := refstore.Open(dir, "origin")
		old := ""
		for i := 0; i < b.N; i++ {
			id, err := s.Prepare(ctx, "bench", []byte(fmt.Sprintf("n = %d\n", i)), old)
			if err != nil {
				b.Fatal(err)
			}
			args := []string{"update-ref", "refs/orch/bench", id}
			if old != "" {
				args = append(args, old)
			} else {
				args = append(args, "")
			}
			if _, err := gitstate.Git(ctx, dir, args...); err != nil {
				b.Fatal(err)
			}
			old = id
		}
	})
	for _, transport := range []string{"file", "http"} {
		b.Run(transport, func(b *testing.B) {
			r := refstoretest.NewRemote(b)
			url := r.FileURL()
			if transport == "http" {
				url = r.Serve(b).URL
			}
			s := open(b, url)
			old := ""
			for i := 0; i < b.N; i++ {
				id, err := s.Prepare(ctx, "bench", []byte(fmt.Sprintf("n = %d\n", i)), old)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "bench", Old: old, New: id}}, refstore.PushOptions{}); err != nil {
					b.Fatal(err)
				}
				old = id
			}
		})
		b.Run(transport+"/read", func(b *testing.B) {
			r := refstoretest.NewRemote(b)
			url := r.FileURL()
			if transport == "http" {
				url = r.Serve(b).URL
			}
			w, rd := open(b, url), open(b, url)
			old := ""
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				id, _ := w.Prepare(ctx, "bench", []byte(fmt.Sprintf("n = %d\n", i)), old)
				if err := w.Update(ctx, []refstore.Update{{Ref: refstore.Prefix + "bench", Old: old, New: id}}, refstore.PushOptions{}); err != nil {
					b.Fatal(err)
				}
				old = id
				b.StartTimer()
				rec, err := rd.Read(ctx, "bench")
				if err != nil || rec.ID != id {
					b.Fatalf("read %+v, %v", rec, err)
				}
			}
		})
	}
}
