package remotejob_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/remotejob"
)

// helperEnv, set in a re-executed test binary's environment, makes it a
// runner process that settles one job (see runHelper).
const helperEnv = "REMOTEJOB_HELPER"

// settleOrder is what the test hands a helper runner on its stdin.
type settleOrder struct {
	URL, Dir, Host, State string
	Claimed               remotejob.Claimed
	End                   remotejob.Ending
}

// runHelper reads one settleOrder, says "settling" and settles it,
// then says how it went. The test kills it while its push waits in the
// remote's hook.
func runHelper() int {
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadBytes('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	var o settleOrder
	if err := json.Unmarshal(line, &o); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	s, err := refstore.Open(o.Dir, o.URL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	q := remotejob.New(s, o.Host, o.State)
	fmt.Println("settling")
	err = q.Settle(context.Background(), &o.Claimed, o.End)
	fmt.Printf("settled %v\n", err)
	return 0
}
