package remotejob_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// BenchmarkList compares List, which reads every record's blob with one
// git cat-file --batch, with reading them one Get (one process) each.
func BenchmarkList(b *testing.B) {
	ctx := context.Background()
	r := refstoretest.NewRemote(b)
	m := newMachine(b, r.FileURL(), "bench")
	const n = 50
	for i := range n {
		must(m.q.Enqueue(ctx, job(fmt.Sprintf("list%02d", i), "build", 1)))(b)
	}
	syncQ(b, m)
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			if l := must(m.q.List(ctx))(b); len(l) != n {
				b.Fatalf("%d jobs", len(l))
			}
		}
	})
	b.Run("per-record", func(b *testing.B) {
		for b.Loop() {
			names := must(m.q.Store.List(ctx, remotejob.Dir))(b)
			for name := range names {
				rec := must(m.q.Store.Get(ctx, name))(b)
				var j remotejob.Job
				if _, err := statefile.DecodeTOML(rec.Data, &j); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
