package hooks

import (
	"context"
	"fmt"
	"os"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// ServerHook is the hook `install --server` writes into a bare repository
// that machines share (remote mode): the fencing check done by the storage
// itself.
const ServerHook = "pre-receive"

// ServerScript is the server's pre-receive hook. It runs on the git server
// with nothing but sh, sed and git (no orch-hooks binary there), and
// refuses a push when:
//   - it updates a branch refs/heads/B and carries the push option
//     orch-token=N (an orch-hooks merge under its lease), and N is not the
//     token of the lease of B held now (refs/orch/leases/B on this server:
//     held = true, token = N). The lease is read as it is before the push,
//     so a merge whose atomic push also renews its lease is judged by the
//     lease it renews. A push without orch-token is a person's, not ours
//     to judge;
//   - it deletes a lease record (refs/orch/leases/...): its token is the
//     counter every later token must exceed.
//
// A chained pre-receive (one that was there before install) runs first
// with the same input and arguments; its refusal stands.
func ServerScript() []byte {
	return []byte(`#!/bin/sh
` + Marker + ` (` + ServerHook + `, server), written by orch-hooks install --server; orch-hooks uninstall removes it.
# Fencing at the server: an update of refs/heads/B pushed with -o orch-token=N
# lands only while N is the token of the lease refs/orch/leases/B held now.
# It needs receive.advertisePushOptions = true (install --server sets it).
input=$(cat)
chained="${0%/*}/` + ServerHook + ChainedSuffix + `"
if [ -x "$chained" ]; then
	printf '%s\n' "$input" | "$chained" "$@" || exit $?
fi
token=
i=0
while [ "$i" -lt "${GIT_PUSH_OPTION_COUNT:-0}" ]; do
	eval "opt=\${GIT_PUSH_OPTION_$i}"
	case $opt in
	orch-token=*) token=${opt#orch-token=} ;;
	esac
	i=$((i + 1))
done
case $token in
*[!0-9]*)
	echo "orch-hooks: refusing the push: orch-token=$token is not a token (a whole number)" >&2
	exit 1
	;;
esac
printf '%s\n' "$input" | {
	while read -r old new ref; do
		[ -n "$ref" ] || continue
		case $ref in
		refs/orch/leases/*)
			case $new in
			*[!0]*) ;;
			*)
				echo "orch-hooks: refusing to delete $ref: the lease's token counter lives in it (a new lease would reuse old tokens); to drop it anyway, run git update-ref -d $ref on the server" >&2
				exit 1
				;;
			esac
			;;
		refs/heads/*)
			[ -n "$token" ] || continue
			branch=${ref#refs/heads/}
			if ! rec=$(git cat-file blob "refs/orch/leases/$branch:record.toml" 2>/dev/null); then
				echo "orch-hooks: refusing $ref: pushed with fencing token $token, but no lease of $branch exists on this server; nothing was updated" >&2
				exit 1
			fi
			held=$(printf '%s\n' "$rec" | sed -n 's/^held = //p')
			cur=$(printf '%s\n' "$rec" | sed -n 's/^token = //p')
			if [ "$held" != true ] || [ "$cur" != "$token" ]; then
				state="held with token $cur"
				[ "$held" = true ] || state="free since token $cur"
				echo "orch-hooks: refusing $ref: fencing token $token is not the current lease's (the lease of $branch is $state): this merger lost its lease; nothing was updated" >&2
				exit 1
			fi
			;;
		esac
	done
}
`)
}

// InstallServer installs ServerScript as the pre-receive hook of the bare
// repository at gitDir, in its hooks dir (core.hooksPath honoured), and
// sets receive.advertisePushOptions so that pushes can send their token.
// A pre-receive that is not ours is kept as pre-receive.orch-hooks-chained
// and run first; installing twice changes nothing.
func InstallServer(ctx context.Context, gitDir string, force bool) ([]Change, error) {
	if bare, err := gitstate.Git(ctx, gitDir, "rev-parse", "--is-bare-repository"); err != nil || bare != "true" {
		if err != nil {
			return nil, fmt.Errorf("install --server: %w", err)
		}
		return nil, fmt.Errorf("install --server: %s is not a bare repository; run it in the repository the machines push to (on the server), or use install for a working clone", gitDir)
	}
	dir, err := Dir(ctx, gitDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install --server: %w", err)
	}
	c, err := installHook(dir, ServerHook, ServerScript(), force, "install --server --force")
	if err != nil {
		return nil, err
	}
	changes := []Change{c}
	if err := statefile.SyncDir(dir); err != nil {
		return changes, err
	}
	if _, err := gitstate.Git(ctx, gitDir, "config", "receive.advertisePushOptions", "true"); err != nil {
		return changes, fmt.Errorf("install --server: set receive.advertisePushOptions (pushes cannot send their token without it): %w", err)
	}
	return changes, nil
}
