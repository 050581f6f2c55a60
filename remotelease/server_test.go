package remotelease_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/refstore"
	"github.com/orch-hooks/orch-hooks/refstore/refstoretest"
)

// TestServerFencing: with orch-hooks install --server in the shared bare
// repository, a push of the target carrying -o orch-token=N lands only
// while N is the current lease's token — checked by the server itself, for
// a plain git push that renews no lease as much as for a fenced write. A
// push without a token (a person's) is not judged, and a lease record
// cannot be deleted by a push.
func TestServerFencing(t *testing.T) {
	t.Parallel()
	transports := map[string]func(*refstoretest.Remote) string{
		"file": func(r *refstoretest.Remote) string { return r.FileURL() },
		"http": func(r *refstoretest.Remote) string { return r.Serve(t).URL },
	}
	for name, urlOf := range transports {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			remote := refstoretest.NewRemote(t)
			// The remote starts without push options advertised: install
			// must turn them on.
			refstoretest.Git(t, remote.Dir, "config", "receive.advertisePushOptions", "false")
			changes, err := hooks.InstallServer(ctx, remote.Dir, false)
			if err != nil || len(changes) != 1 || changes[0].Action != "installed" {
				t.Fatalf("install --server: %v, %v", changes, err)
			}
			if got := refstoretest.Git(t, remote.Dir, "config", "receive.advertisePushOptions"); got != "true" {
				t.Fatalf("receive.advertisePushOptions = %q after install", got)
			}
			if changes, err := hooks.InstallServer(ctx, remote.Dir, false); err != nil || changes[0].Action != "unchanged" {
				t.Fatalf("install twice: %v, %v", changes, err)
			}
			url := urlOf(remote)
			a, b := newMachine(t, url, "host-a"), newMachine(t, url, "host-b")
			ha, err := a.m.TryAcquire(ctx, "main", a.req(1, time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			c1 := prepareCommit(t, a.store)
			if err := a.m.Fenced(ctx, ha, []refstore.Update{{Ref: "refs/heads/main", New: c1}}, true); err != nil {
				t.Fatalf("the holder's fenced write with its token: %v", err)
			}
			// host-b takes the lease over once its TTL has passed (by its clock).
			later := time.Now().Add(2 * time.Minute)
			b.m.Now = func() time.Time { return later }
			hb, err := b.m.TryAcquire(ctx, "main", b.req(2, time.Minute))
			if err != nil || hb.Token != ha.Token+1 {
				t.Fatalf("takeover: %+v, %v", hb, err)
			}
			// The old holder pushes the target with its token but without its
			// lease in the same push (as a tool that only sends the token
			// would): the server refuses.
			c2 := prepareCommit(t, a.store)
			out, err := pushFrom(a, url, []string{"-o", "orch-token=1", "--force-with-lease=refs/heads/main:" + c1}, c2+":refs/heads/main")
			if err == nil || !strings.Contains(out, "fencing token 1 is not the current lease's") {
				t.Fatalf("push with a stale token: %v\n%s", err, out)
			}
			if got := remoteRef(t, remote, "refs/heads/main"); got != c1 {
				t.Fatalf("main = %s after a refused push, want %s", got, c1)
			}
			// The same refusal through a fenced write (the lease is gone, too).
			err = a.m.Fenced(ctx, ha, []refstore.Update{{Ref: "refs/heads/main", Old: c1, New: c2}}, true)
			if !errors.Is(err, lease.ErrStaleToken) {
				t.Fatalf("fenced write of the old holder: %v", err)
			}
			// A bad token and a token for a branch with no lease are refused.
			if out, err := pushFrom(a, url, []string{"-o", "orch-token=x1", "--force"}, c2+":refs/heads/main"); err == nil || !strings.Contains(out, "not a token") {
				t.Fatalf("push with a malformed token: %v\n%s", err, out)
			}
			if out, err := pushFrom(a, url, []string{"-o", "orch-token=2", "--force"}, c2+":refs/heads/other"); err == nil || !strings.Contains(out, "no lease of other") {
				t.Fatalf("push of a branch without a lease: %v\n%s", err, out)
			}
			// The current holder's token lands, in a plain push too.
			c3 := prepareCommit(t, b.store)
			if out, err := pushFrom(b, url, []string{"-o", "orch-token=2", "--force-with-lease=refs/heads/main:" + c1}, c3+":refs/heads/main"); err != nil {
				t.Fatalf("push with the current token: %v\n%s", err, out)
			}
			// A person's push (no token) is not judged.
			c4 := prepareCommit(t, b.store)
			if out, err := pushFrom(b, url, []string{"--force"}, c4+":refs/heads/main"); err != nil {
				t.Fatalf("push without a token: %v\n%s", err, out)
			}
			// A released lease's token is not current either.
			if err := b.m.Release(ctx, hb); err != nil {
				t.Fatal(err)
			}
			if out, err := pushFrom(b, url, []string{"-o", "orch-token=2", "--force"}, c3+":refs/heads/main"); err == nil || !strings.Contains(out, "free since token 2") {
				t.Fatalf("push with a released token: %v\n%s", err, out)
			}
			// Deleting the lease record is refused (it holds the counter).
			if out, err := pushFrom(b, url, nil, ":"+refstore.Prefix+"leases/main"); err == nil || !strings.Contains(out, "refusing to delete") {
				t.Fatalf("delete of the lease record: %v\n%s", err, out)
			}
			if remoteRef(t, remote, refstore.Prefix+"leases/main") == "" {
				t.Fatal("the lease record was deleted")
			}
		})
	}
}

// TestServerHookChains: a pre-receive that was there is kept, runs first
// with the same input, and its refusal stands; uninstall puts it back.
func TestServerHookChains(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	remote := refstoretest.NewRemote(t)
	hookPath := filepath.Join(remote.Dir, "hooks", "pre-receive")
	seen := filepath.Join(t.TempDir(), "seen")
	foreign := "#!/bin/sh\ncat >" + seen + "\ncase \"$(cat " + seen + ")\" in *refs/heads/blocked*) echo blocked by site policy >&2; exit 1;; esac\n"
	if err := os.WriteFile(hookPath, []byte(foreign), 0o755); err != nil {
		t.Fatal(err)
	}
	changes, err := hooks.InstallServer(ctx, remote.Dir, false)
	if err != nil || changes[0].Action != "chained" {
		t.Fatalf("install over a foreign hook: %v, %v", changes, err)
	}
	a := newMachine(t, remote.FileURL(), "host-a")
	c := prepareCommit(t, a.store)
	if out, err := pushFrom(a, remote.FileURL(), nil, c+":refs/heads/blocked"); err == nil || !strings.Contains(out, "blocked by site policy") {
		t.Fatalf("the chained hook's refusal: %v\n%s", err, out)
	}
	if out, err := pushFrom(a, remote.FileURL(), nil, c+":refs/heads/fine"); err != nil {
		t.Fatalf("a push the chained hook accepts: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(seen); !strings.Contains(string(b), "refs/heads/fine") {
		t.Fatalf("the chained hook saw %q", b)
	}
	if _, err := hooks.Uninstall(filepath.Join(remote.Dir, "hooks")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(hookPath); err != nil || string(b) != foreign {
		t.Fatalf("uninstall did not restore the foreign hook: %q, %v", b, err)
	}
	if _, err := hooks.InstallServer(ctx, t.TempDir(), false); err == nil {
		t.Fatal("install --server outside a bare repository succeeded")
	}
}

// pushFrom runs git push with opts of refspecs from machine mc's
// repository, returning its output.
func pushFrom(mc *machine, url string, opts []string, specs ...string) (string, error) {
	args := append(append(append([]string{"push", "--porcelain"}, opts...), url), specs...)
	return refstoretest.TryGit(mc.dir, args...)
}
