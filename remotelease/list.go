package remotelease

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// List returns every lease of the remote as of the store's last Fetch (no
// fetch of its own: status reads it right after the queue's Sync), by
// target. A record that does not decode is reported in unreadable, never
// dropped. For people to read: a decision to write re-reads (Get).
func (m *Manager) List(ctx context.Context) (leases []*Lease, unreadable []*gitstate.UnreadableError, err error) {
	recs, err := m.Store.List(ctx, "leases")
	if err != nil {
		return nil, nil, err
	}
	names := make([]string, 0, len(recs))
	for name := range recs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rec, err := m.Store.Get(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		if rec.ID == "" {
			continue // pruned between List and Get
		}
		var l Lease
		if _, err := statefile.DecodeTOML(rec.Data, &l); err != nil {
			unreadable = append(unreadable, &gitstate.UnreadableError{
				Path: fmt.Sprintf("%s %s%s (version %s)", m.Store.Remote(), refstore.Prefix, name, rec.ID),
				Err:  fmt.Errorf("%w; look at it with git show %s:%s", err, rec.ID, refstore.FileName),
			})
			continue
		}
		if l.Target == "" {
			l.Target = strings.TrimPrefix(name, "leases/")
		}
		leases = append(leases, &l)
	}
	return leases, unreadable, nil
}
