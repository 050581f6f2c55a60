package remotejob_test

import (
	"testing"

	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
	"github.com/orch-hooks/orch-hooks/remotejob"
	"github.com/orch-hooks/orch-hooks/remotejob/remotejobtest"
)

// checkInvariants checks the queue's invariants on the remote's history
// (remotejobtest.Check); the tests here write undecodable records on
// purpose.
func checkInvariants(t testing.TB, r *refstoretest.Remote) map[string][]remotejob.Job {
	t.Helper()
	return remotejobtest.Check(t, r.Dir, remotejobtest.Rules{Undecodable: true})
}
