// Package remotelease grants one merge lease per target branch across
// machines, kept on the shared git remote as the record
// refs/orch/leases/<target> (a refstore record). Every change of a lease —
// acquire, renew, release, reclaim, and a holder's fenced write — is a
// compare-and-swap on that ref, so the server, not any machine, decides
// who holds it.
//
// Tokens: a lease record is never deleted; a release or reclaim writes a
// free version that keeps the last token, and an acquire writes token =
// the current version's token + 1, expecting that version. Two acquirers
// that read the same version cannot both land, so every token is issued
// once, and every token is larger than every one issued before for the
// target (as long as nobody deletes the ref by hand: a deleted ref starts
// over at 1; the server hook refuses such a deletion where installed).
//
// Holders: a holder's every write names the version it last wrote as the
// expected old value. Once anyone else writes the lease (an acquire after
// a reclaim), that version is gone for good (versions never repeat, each
// being the child of the one before), so no write of the old holder can
// land after it — "no two holders whose writes both land" is enforced by
// the server's ref update, not by clocks. A fenced write (Fenced) carries
// the holder's other ref updates (the target branch) in the same atomic
// push as a renewal of the lease, so it lands only while the lease is
// still the holder's.
//
// Staleness: across hosts a lease is stale only when it has not been
// renewed for its TTL plus a clock-skew allowance, judged by the judge's
// wall clock against the holder's; the holder's process identity is only
// checked on the holder's own host and boot (procid.Check says Unknown
// elsewhere). Clocks skewed beyond the allowance can make a lease stale
// early; that only costs the old holder its lease (its writes then fail),
// never a double write.
package remotelease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ClockSkewDefault is the clock difference between machines a TTL
// tolerates before a live holder can lose its lease early (see the
// package comment and docs/DISTRIBUTED.md).
const ClockSkewDefault = 30 * time.Second

// TokenOption is the push option that names a holder's fencing token; the
// server's pre-receive hook (orch-hooks install --server) refuses an update
// of the target pushed with a token that is not the current lease's.
const TokenOption = "orch-token"

// attempts bounds the re-reads after a lost compare-and-swap in one call.
const attempts = 8

// Lease is one version of a lease record. A free lease (Held false) keeps
// the last token issued.
type Lease struct {
	Version    int             `toml:"version"`
	Target     string          `toml:"target"`
	Held       bool            `toml:"held"`
	Token      uint64          `toml:"token"`
	Holder     string          `toml:"holder"`
	Owner      procid.Identity `toml:"owner"`
	AcquiredAt time.Time       `toml:"acquired_at"`
	RenewedAt  time.Time       `toml:"renewed_at"`
	TTLMS      int64           `toml:"ttl_ms"`
	// Ended says how a free lease was freed ("released", "reclaimed: ...").
	Ended string `toml:"ended,omitempty"`
}

// TTL is the lease's time to live after its last renewal.
func (l *Lease) TTL() time.Duration { return time.Duration(l.TTLMS) * time.Millisecond }

// Held is a lease as its holder knows it: the lease and the version (ref
// id) the holder last wrote, which every further write of the holder
// expects.
type Held struct {
	Lease
	ID string
}

// Manager grants the leases of one remote.
type Manager struct {
	Store *refstore.Store
	// Now is the clock; tests may replace it (a machine whose clock is
	// skewed).
	Now func() time.Time
	// ClockSkew is added to a lease's TTL before it is stale by age (New
	// sets ClockSkewDefault).
	ClockSkew time.Duration
	// PollMax caps the wait between two looks of Acquire at a held lease
	// (each look is a fetch); zero means 500 ms.
	PollMax time.Duration
}

// New returns the lease manager of the records in s.
func New(s *refstore.Store) *Manager {
	return &Manager{Store: s, Now: time.Now, ClockSkew: ClockSkewDefault}
}

// RecordName is the record of target's lease.
func RecordName(target string) string { return "leases/" + target }

func (m *Manager) skew() time.Duration { return max(m.ClockSkew, 0) }

// Stale reports whether a held lease l may be taken over at now, and why:
// its owner is confirmed dead by identity (only on its own host, boot and
// pid namespace), or it has not been renewed for longer than its TTL plus
// skew. A renewal in the future (a clock ahead of ours) never makes it
// stale by age.
func Stale(l *Lease, now time.Time, skew time.Duration) (bool, string) {
	if !l.Held {
		return true, "free"
	}
	if live, err := procid.Check(l.Owner); err == nil && live == procid.Dead {
		return true, fmt.Sprintf("owner %s is dead", l.Owner)
	}
	if age := now.Sub(l.RenewedAt); age > l.TTL()+skew {
		return true, fmt.Sprintf("not renewed for %s, ttl %s + clock skew allowance %s", age.Round(time.Millisecond), l.TTL(), skew)
	}
	return false, ""
}

// read returns the remote's current version of target's lease: the lease
// (nil when there never was one) and its id.
func (m *Manager) read(ctx context.Context, target string) (*Lease, string, error) {
	rec, err := m.Store.Read(ctx, RecordName(target))
	if err != nil {
		return nil, "", fmt.Errorf("lease %s on %s: %w", target, m.Store.Remote(), err)
	}
	if rec.ID == "" {
		return nil, "", nil
	}
	var l Lease
	if _, err := statefile.DecodeTOML(rec.Data, &l); err != nil {
		// Never overwritten: its token is the counter every new token
		// must exceed.
		return nil, rec.ID, &gitstate.UnreadableError{
			Path: fmt.Sprintf("%s %s%s (version %s)", m.Store.Remote(), refstore.Prefix, RecordName(target), rec.ID),
			Err:  fmt.Errorf("%w; look at it with git show %s:%s, and repair it by pushing a record that keeps its token", err, rec.ID, refstore.FileName),
		}
	}
	return &l, rec.ID, nil
}

// Get returns the remote's current lease of target (nil when none was ever
// taken) and its version id.
func (m *Manager) Get(ctx context.Context, target string) (*Lease, string, error) {
	if err := gitstate.ValidateBranch(target); err != nil {
		return nil, "", err
	}
	return m.read(ctx, target)
}

// write prepares the version l of target's lease as a child of old and
// returns it with the update that sets it.
func (m *Manager) prepare(ctx context.Context, l *Lease, old string) (refstore.Update, error) {
	data, err := statefile.EncodeTOML(l)
	if err != nil {
		return refstore.Update{}, fmt.Errorf("lease %s: %w", l.Target, err)
	}
	id, err := m.Store.Prepare(ctx, RecordName(l.Target), data, old)
	if err != nil {
		return refstore.Update{}, fmt.Errorf("lease %s: %w", l.Target, err)
	}
	return refstore.Update{Ref: refstore.Prefix + RecordName(l.Target), Old: old, New: id}, nil
}

// landed reports, after a write whose outcome is unknown (the transport
// failed), whether up is the remote's current version.
func (m *Manager) landed(ctx context.Context, target string, up refstore.Update) bool {
	_, id, err := m.read(ctx, target)
	return err == nil && id == up.New
}

// TryAcquire takes target's lease for req at once if it is free, stale or
// was never taken; a live holder's lease is lease.ErrBusy.
func (m *Manager) TryAcquire(ctx context.Context, target string, req lease.Request) (*Held, error) {
	if err := gitstate.ValidateBranch(target); err != nil {
		return nil, err
	}
	if req.TTL <= 0 {
		return nil, fmt.Errorf("lease %s: ttl must be positive (got %s)", target, req.TTL)
	}
	for i := 0; i < attempts; i++ {
		cur, old, err := m.read(ctx, target)
		if err != nil {
			return nil, err
		}
		now := m.Now().UTC()
		var token uint64 = 1
		if cur != nil {
			if stale, _ := Stale(cur, now, m.skew()); !stale {
				return nil, fmt.Errorf("lease %s on %s: %w by %s (%s, token %d) since %s", target, m.Store.Remote(), lease.ErrBusy,
					cur.Holder, cur.Owner, cur.Token, cur.AcquiredAt.Format(time.RFC3339))
			}
			token = cur.Token + 1
		}
		l := Lease{Version: 1, Target: target, Held: true, Token: token, Holder: req.Holder, Owner: req.Owner,
			AcquiredAt: now, RenewedAt: now, TTLMS: req.TTL.Milliseconds()}
		up, err := m.prepare(ctx, &l, old)
		if err != nil {
			return nil, err
		}
		err = m.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
		switch {
		case err == nil:
			return &Held{Lease: l, ID: up.New}, nil
		case errors.Is(err, refstore.ErrConflict):
			continue // someone else wrote it first: look again
		case errors.Is(err, refstore.ErrUnreachable) && m.landed(ctx, target, up):
			return &Held{Lease: l, ID: up.New}, nil
		default:
			return nil, fmt.Errorf("lease %s: %w", target, err)
		}
	}
	return nil, fmt.Errorf("lease %s on %s: %w: it changed under %d attempts in a row", target, m.Store.Remote(), lease.ErrBusy, attempts)
}

// Acquire is TryAcquire, looking again (one fetch per look, backing off up
// to PollMax) while a live holder has the lease, until ctx is done.
func (m *Manager) Acquire(ctx context.Context, target string, req lease.Request) (*Held, error) {
	wait := 20 * time.Millisecond
	max := m.PollMax
	if max <= 0 {
		max = 500 * time.Millisecond
	}
	for {
		h, err := m.TryAcquire(ctx, target, req)
		if !errors.Is(err, lease.ErrBusy) {
			return h, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		if wait *= 2; wait > max {
			wait = max
		}
	}
}

// ours reports whether cur is h's lease written by h (a write of h that
// landed though h never learnt it did: only the holder writes a held
// version with its token).
func ours(cur *Lease, h *Held) bool {
	return cur != nil && cur.Held && cur.Token == h.Token && cur.Owner == h.Owner
}

// change writes next (a version of h's lease) together with others, as one
// compare-and-swap from h.ID, and on success makes it h's. When the lease
// is no longer h's it returns lease.ErrStaleToken and nothing landed.
func (m *Manager) change(ctx context.Context, h *Held, next Lease, others []refstore.Update, opts refstore.PushOptions) error {
	if !h.Held {
		return fmt.Errorf("lease %s: token %d: %w (released by this holder); nothing was written", h.Target, h.Token, lease.ErrStaleToken)
	}
	for i := 0; i < attempts; i++ {
		up, err := m.prepare(ctx, &next, h.ID)
		if err != nil {
			return err
		}
		err = m.Store.Update(ctx, append(append([]refstore.Update(nil), others...), up), opts)
		if errors.Is(err, refstore.ErrUnreachable) && m.landed(ctx, h.Target, up) {
			err = nil
		}
		if err == nil {
			h.Lease, h.ID = next, up.New
			return nil
		}
		if !errors.Is(err, refstore.ErrConflict) {
			return fmt.Errorf("lease %s: %w", h.Target, err)
		}
		cur, id, rerr := m.read(ctx, h.Target)
		if rerr != nil {
			return rerr
		}
		switch {
		case id == h.ID && len(others) == 0:
			continue // a lock held by a racing acquirer at that instant: again
		case id == h.ID:
			// The lease is as h left it: another ref of the write lost.
			return fmt.Errorf("lease %s (token %d, still held): %w", h.Target, h.Token, err)
		case ours(cur, h):
			h.ID = id // a write of ours that landed unseen: go on from it
		default:
			holder := "nobody"
			if cur != nil && cur.Held {
				holder = fmt.Sprintf("%s with token %d", cur.Holder, cur.Token)
			}
			return fmt.Errorf("lease %s on %s: token %d: %w (the lease is held by %s); nothing was written",
				h.Target, m.Store.Remote(), h.Token, lease.ErrStaleToken, holder)
		}
	}
	return fmt.Errorf("lease %s: token %d: it changed under %d attempts in a row; nothing was written", h.Target, h.Token, attempts)
}

// Renew extends h's lease; lease.ErrStaleToken when it is no longer h's.
func (m *Manager) Renew(ctx context.Context, h *Held) error {
	next := h.Lease
	next.RenewedAt = m.Now().UTC()
	return m.change(ctx, h, next, nil, refstore.PushOptions{})
}

// Release frees h's lease, keeping its token for the next acquirer to
// exceed; lease.ErrStaleToken when it is no longer h's.
func (m *Manager) Release(ctx context.Context, h *Held) error {
	next := h.Lease
	next.Held, next.Ended, next.RenewedAt = false, "released", m.Now().UTC()
	return m.change(ctx, h, next, nil, refstore.PushOptions{})
}

// Fenced makes the ref updates ups on the remote only while h still holds
// its lease: they are pushed atomically with a renewal of the lease that
// expects h's last version, so if anyone took the lease meanwhile nothing
// lands (lease.ErrStaleToken); if one of ups lost its own
// compare-and-swap, the error matches refstore.ErrConflict and the lease
// is still h's. withToken also sends the token as a push option
// (TokenOption) for a server hook to check; the server must then
// advertise push options.
func (m *Manager) Fenced(ctx context.Context, h *Held, ups []refstore.Update, withToken bool) error {
	next := h.Lease
	next.RenewedAt = m.Now().UTC()
	var opts refstore.PushOptions
	if withToken {
		opts.Options = []string{TokenOption + "=" + strconv.FormatUint(h.Token, 10)}
	}
	return m.change(ctx, h, next, ups, opts)
}

// Reclaim frees target's lease if it is held and stale, writing a free
// version that keeps the token, and does nothing else. It reports whether
// it did; a lease changed meanwhile is left alone.
func (m *Manager) Reclaim(ctx context.Context, target string) (bool, error) {
	cur, old, err := m.Get(ctx, target)
	if err != nil || cur == nil || !cur.Held {
		return false, err
	}
	stale, why := Stale(cur, m.Now().UTC(), m.skew())
	if !stale {
		return false, nil
	}
	next := *cur
	next.Held, next.Ended = false, "reclaimed: "+why
	up, err := m.prepare(ctx, &next, old)
	if err != nil {
		return false, err
	}
	err = m.Store.Update(ctx, []refstore.Update{up}, refstore.PushOptions{})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, refstore.ErrConflict):
		return false, nil
	case errors.Is(err, refstore.ErrUnreachable) && m.landed(ctx, target, up):
		return true, nil
	}
	return false, fmt.Errorf("reclaim lease %s: %w", target, err)
}
