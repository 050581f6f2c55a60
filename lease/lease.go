// Package lease grants one merge lease per target branch, with fencing
// tokens. A lease record names its holder and owning process; it is stale
// when that process is confirmed dead by identity or its TTL has passed, and
// a stale lease is reclaimed by deleting its record — nothing else. Every
// token is larger than every token issued before for the same target (the
// counter survives release and reclaim), and WithToken lets a holder make a
// write only while its token is still the current lease's, so a holder whose
// lease was reclaimed while it slept can never write.
package lease

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/orch-hooks/orch-hooks/crashpoint"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Errors callers tell apart (all wrapped).
var (
	// ErrBusy: the lease is held by a live holder past the wait.
	ErrBusy = errors.New("lease is held")
	// ErrStaleToken: the token is not the current lease's (released,
	// reclaimed, or taken by another holder since).
	ErrStaleToken = errors.New("fencing token is not current")
)

// WaitPollMax caps the backoff between two looks at a held lease when the
// file system cannot wake waiters (no notifications): a release is noticed
// within this long.
const WaitPollMax = 5 * time.Millisecond

// Lease is one lease record.
type Lease struct {
	Version    int             `toml:"version"`
	Target     string          `toml:"target"`
	Holder     string          `toml:"holder"`
	Owner      procid.Identity `toml:"owner"`
	Token      uint64          `toml:"token"`
	AcquiredAt time.Time       `toml:"acquired_at"`
	RenewedAt  time.Time       `toml:"renewed_at"`
	TTLMS      int64           `toml:"ttl_ms"`
}

// TTL is the lease's time to live after its last renewal.
func (l *Lease) TTL() time.Duration { return time.Duration(l.TTLMS) * time.Millisecond }

// Request describes who wants a lease.
type Request struct {
	Holder string          // free-form name shown in status
	Owner  procid.Identity // the process whose death frees the lease
	TTL    time.Duration
}

// Manager grants leases in one state dir.
type Manager struct {
	dir string // <state>/leases
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// WaitRecheck bounds how long a waiter sleeps between two looks when
	// the file system wakes it on releases; zero means WaitRecheckDefault.
	WaitRecheck time.Duration

	busyHook func() // tests: called when a look found the lease held
	noWatch  bool   // tests: wait as when the file system cannot notify
}

// Open returns the lease manager of a state dir.
func Open(stateDir string) *Manager {
	return &Manager{dir: filepath.Join(stateDir, "leases"), Now: time.Now}
}

func fileName(target string) string { return gitstate.RefFileName(target) }

func targetOf(name string) string { return gitstate.RefFromFileName(name) }

func (m *Manager) recordPath(target string) string {
	return filepath.Join(m.dir, fileName(target)+".toml")
}
func (m *Manager) seqPath(target string) string { return filepath.Join(m.dir, fileName(target)+".seq") }
func (m *Manager) lockPath(target string) string {
	return filepath.Join(filepath.Dir(m.dir), "locks", "lease-"+fileName(target)+".lock")
}

// lock takes a target's lease lock; it is held only for a read-modify-write
// of the records, never for the life of a lease.
func (m *Manager) lock(ctx context.Context, target string) (func(), error) {
	if err := gitstate.ValidateBranch(target); err != nil {
		return nil, err
	}
	if err := os.Mkdir(m.dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("lease %s: %w%s", target, err, statefile.PermissionHint(err, filepath.Dir(m.dir)))
	}
	// leases/ and locks/ must be directories, not symlinks to elsewhere.
	for _, d := range []string{m.dir, filepath.Dir(m.lockPath(target))} {
		if err := statefile.CheckDir(d); err != nil {
			return nil, fmt.Errorf("lease %s: %w", target, err)
		}
	}
	unlock, err := statefile.Lock(ctx, m.lockPath(target))
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", target, err)
	}
	return unlock, nil
}

// read returns the current lease of target, or nil.
func (m *Manager) read(target string) (*Lease, error) {
	data, err := statefile.ReadFile(m.recordPath(target), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if errors.Is(err, statefile.ErrTooLarge) || errors.Is(err, statefile.ErrNotRegular) {
		// Damaged like a record that does not parse: reported, not trusted.
		err = errors.Unwrap(err) // the *fs.PathError's inner error: the path is named once
		return nil, &gitstate.UnreadableError{Path: m.recordPath(target), Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", target, err)
	}
	var l Lease
	if _, err := statefile.DecodeTOML(data, &l); err != nil {
		return nil, &gitstate.UnreadableError{Path: m.recordPath(target), Err: err}
	}
	return &l, nil
}

// Get returns the current lease of target, or nil when there is none.
func (m *Manager) Get(target string) (*Lease, error) { return m.read(target) }

// Stale reports whether l may be reclaimed at now, and why: its owner is
// confirmed dead by identity (same host, boot and pid namespace only: an
// owner in another pid namespace is Unknown), or it was last
// renewed more than its TTL ago. A renewal in the future (the clock moved
// back) never makes a lease stale by age.
func Stale(l *Lease, now time.Time) (bool, string) {
	if live, err := procid.Check(l.Owner); err == nil && live == procid.Dead {
		return true, fmt.Sprintf("owner %s is dead", l.Owner)
	}
	if age := now.Sub(l.RenewedAt); age > l.TTL() {
		return true, fmt.Sprintf("not renewed for %s, ttl %s", age.Round(time.Millisecond), l.TTL())
	}
	return false, ""
}

// Acquire takes the lease of target for req, waiting while a live holder
// has it until ctx is done; it then fails with ErrBusy. A stale lease found
// on the way is reclaimed first.
func (m *Manager) Acquire(ctx context.Context, target string, req Request) (*Lease, error) {
	// The watch starts before the first look, so a release between that
	// look and the wait still wakes the waiter.
	var w *dirWatch
	if !m.noWatch {
		w = watchDir(m.dir)
	}
	if w != nil {
		defer w.close()
	}
	wait := 100 * time.Microsecond
	for {
		l, err := m.TryAcquire(ctx, target, req)
		if !errors.Is(err, ErrBusy) {
			return l, err
		}
		if m.busyHook != nil {
			m.busyHook()
		}
		if w != nil && w.alive() {
			recheck := m.WaitRecheck
			if recheck <= 0 {
				recheck = WaitRecheckDefault
			}
			w.wait(ctx, recheck, filepath.Base(m.recordPath(target)))
			if ctx.Err() != nil {
				return nil, err
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		if wait *= 2; wait > WaitPollMax {
			wait = WaitPollMax
		}
	}
}

// TryAcquire takes the lease of target if it is free or stale, at once.
func (m *Manager) TryAcquire(ctx context.Context, target string, req Request) (*Lease, error) {
	if req.TTL <= 0 {
		return nil, fmt.Errorf("lease %s: ttl must be positive (got %s)", target, req.TTL)
	}
	unlock, err := m.lock(ctx, target)
	if errors.Is(err, statefile.ErrLockTimeout) && ctx.Err() != nil {
		// The caller's wait for the lease is over while another process
		// holds the record lock (a renewal, a fenced write): busy, as a
		// held lease is, not a failure.
		return nil, fmt.Errorf("lease %s: %w: another process is changing it (%v)", target, ErrBusy, err)
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	now := m.Now().UTC()
	cur, err := m.read(target)
	if err != nil {
		return nil, err
	}
	if cur != nil {
		if stale, _ := Stale(cur, now); !stale {
			return nil, fmt.Errorf("lease %s: %w by %s (%s, token %d) since %s", target, ErrBusy, cur.Holder, cur.Owner, cur.Token, cur.AcquiredAt.Format(time.RFC3339))
		}
	}
	// The counter is written before the lease, so a crash in between only
	// skips a token; tokens never repeat.
	token, err := m.lastToken(target)
	if err != nil {
		return nil, err
	}
	token++
	if err := statefile.Replace(m.seqPath(target), []byte(strconv.FormatUint(token, 10)+"\n")); err != nil {
		return nil, fmt.Errorf("lease %s: %w", target, err)
	}
	l := &Lease{Version: 1, Target: target, Holder: req.Holder, Owner: req.Owner, Token: token,
		AcquiredAt: now, RenewedAt: now, TTLMS: req.TTL.Milliseconds()}
	if err := m.write(l); err != nil {
		return nil, err
	}
	crashpoint.Hit("lease.acquired")
	return l, nil
}

func (m *Manager) lastToken(target string) (uint64, error) {
	data, err := statefile.ReadFile(m.seqPath(target), statefile.MaxSizeDefault)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("lease %s: token counter: %w", target, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lease %s: token counter %s is damaged (%v); it must hold the last token issued", target, m.seqPath(target), err)
	}
	return n, nil
}

func (m *Manager) write(l *Lease) error {
	// The holder is any text a user typed (statefile.EncodeTOML escapes
	// what is not UTF-8, so the lease always reads back).
	data, err := statefile.EncodeTOML(l)
	if err != nil {
		return fmt.Errorf("lease %s: %w", l.Target, err)
	}
	if err := statefile.Replace(m.recordPath(l.Target), data); err != nil {
		return fmt.Errorf("lease %s: %w", l.Target, err)
	}
	return nil
}

// current returns the lease if token is its token, else ErrStaleToken.
func (m *Manager) current(target string, token uint64) (*Lease, error) {
	cur, err := m.read(target)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return nil, fmt.Errorf("lease %s: token %d: %w (no lease is held)", target, token, ErrStaleToken)
	}
	if cur.Token != token {
		return nil, fmt.Errorf("lease %s: token %d: %w (the lease is held by %s with token %d)", target, token, ErrStaleToken, cur.Holder, cur.Token)
	}
	return cur, nil
}

// Release ends the lease of target if token is current; otherwise it
// returns ErrStaleToken and leaves the lease untouched.
func (m *Manager) Release(ctx context.Context, target string, token uint64) error {
	unlock, err := m.lock(ctx, target)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := m.current(target, token); err != nil {
		return err
	}
	crashpoint.Hit("lease.release")
	return m.remove(target)
}

func (m *Manager) remove(target string) error {
	if err := os.Remove(m.recordPath(target)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lease %s: %w", target, err)
	}
	return statefile.SyncDir(m.dir)
}

// Renew extends the lease of target if token is current.
func (m *Manager) Renew(ctx context.Context, target string, token uint64) (*Lease, error) {
	unlock, err := m.lock(ctx, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, err := m.current(target, token)
	if err != nil {
		return nil, err
	}
	cur.RenewedAt = m.Now().UTC()
	return cur, m.write(cur)
}

// WithToken runs fn under the target's lease lock, only if token is still
// the current lease's: the fencing check a holder makes immediately before
// a write (a ref update), so that no reclaim can come between the check and
// the write.
func (m *Manager) WithToken(ctx context.Context, target string, token uint64, fn func() error) error {
	unlock, err := m.lock(ctx, target)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := m.current(target, token); err != nil {
		return err
	}
	return fn()
}

// List returns every lease held now, by target, and the records that
// cannot be read.
func (m *Manager) List() ([]*Lease, []*gitstate.UnreadableError, error) {
	if err := statefile.CheckDir(m.dir); errors.Is(err, statefile.ErrNotRegular) {
		return nil, []*gitstate.UnreadableError{{Path: m.dir, Err: errors.Unwrap(err)}}, nil
	}
	ents, err := os.ReadDir(m.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list leases: %w", err)
	}
	var out []*Lease
	var bad []*gitstate.UnreadableError
	for _, e := range ents {
		name := e.Name()
		if statefile.IsTemp(name) || !strings.HasSuffix(name, ".toml") {
			continue
		}
		l, err := m.read(targetOf(strings.TrimSuffix(name, ".toml")))
		var ue *gitstate.UnreadableError
		switch {
		case errors.As(err, &ue):
			bad = append(bad, ue)
		case err != nil:
			bad = append(bad, &gitstate.UnreadableError{Path: filepath.Join(m.dir, name), Err: err})
		case l != nil:
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out, bad, nil
}

// ReclaimStale deletes every stale lease record, each under its lock after
// judging it again there; dry, it only reports. It returns the targets
// reclaimed (or that would be) and an error per target it could not judge.
// It is the reaper's lease step (reaper.LeaseReclaimer).
func (m *Manager) ReclaimStale(ctx context.Context, dryRun bool) ([]string, map[string]error) {
	leases, bad, err := m.List()
	errs := map[string]error{}
	if err != nil {
		errs["*"] = err
		return nil, errs
	}
	for _, u := range bad {
		errs[u.Path] = u
	}
	var reclaimed []string
	for _, l := range leases {
		if dryRun {
			if stale, _ := Stale(l, m.Now()); stale {
				reclaimed = append(reclaimed, l.Target)
			}
			continue
		}
		ok, err := m.Reclaim(ctx, l.Target)
		if err != nil {
			errs[l.Target] = err
		} else if ok {
			reclaimed = append(reclaimed, l.Target)
		}
	}
	return reclaimed, errs
}

// Reclaim deletes the lease of target if it is stale, and does nothing else.
func (m *Manager) Reclaim(ctx context.Context, target string) (bool, error) {
	unlock, err := m.lock(ctx, target)
	if err != nil {
		return false, err
	}
	defer unlock()
	cur, err := m.read(target)
	if err != nil || cur == nil {
		return false, err
	}
	if stale, _ := Stale(cur, m.Now()); !stale {
		return false, nil
	}
	crashpoint.Hit("lease.reclaim")
	return true, m.remove(target)
}
