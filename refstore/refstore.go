// Package refstore keeps records on a shared git remote as refs under
// refs/orch/: each record is a small commit whose tree holds one file,
// record.toml, and whose parent is the record's previous version. The git
// server is the only arbiter: a write is a compare-and-swap push
// (`git push --force-with-lease=<ref>:<expected> --atomic`), which the
// server applies under its own ref lock, so of any number of writers that
// expected the same old version exactly one lands. A reader fetches only
// refs/orch/* into a private local namespace
// (refs/orch-remote/<remote>/...), incrementally.
//
// A record's version is its commit id. Because every new version names the
// version it replaces as its parent, a version id never comes back: a writer
// whose expected version is gone can never land a write by coincidence.
//
// Every git process runs through gitstate's runner (ORCH_HOOKS=0, no
// GIT_DIR and friends from the caller's environment).
package refstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// Prefix is where records live on the remote.
const Prefix = "refs/orch/"

// mirrorRoot is the local namespace fetched records are kept under: never
// pushed, never shown as branches.
const mirrorRoot = "refs/orch-remote/"

// FileName is the one file in a record commit's tree.
const FileName = "record.toml"

// Errors callers tell apart (wrapped; see the typed errors).
var (
	// ErrConflict: a compare-and-swap lost: some ref was not at the
	// version the writer expected (another writer won). Nothing of the
	// write landed; re-read and retry, or report the loss.
	ErrConflict = errors.New("compare-and-swap lost: the record changed since it was read")
	// ErrRefused: the server refused the update for another reason than
	// its expected version (a hook, permissions). Nothing landed.
	ErrRefused = errors.New("the remote refused the update")
	// ErrUnreachable: the remote could not be reached or the transport
	// failed. A write that fails so did not land if the remote was never
	// reached; when the connection broke after sending, it may have:
	// re-read to learn (a version id is unique, so finding the new id
	// means it landed).
	ErrUnreachable = errors.New("remote unreachable")
)

// RefError is a write the server did not apply: Refs names each ref with
// git's reason. It matches ErrConflict or ErrRefused through errors.Is.
type RefError struct {
	Remote   string
	Conflict bool
	Refs     map[string]string // ref -> git's reason
}

func (e *RefError) Error() string {
	var parts []string
	for ref, why := range e.Refs {
		parts = append(parts, ref+" ("+why+")")
	}
	sort.Strings(parts)
	kind := ErrRefused
	fix := "see the reasons; nothing was written"
	if e.Conflict {
		kind = ErrConflict
		fix = "nothing was written; read again and retry, or give up: someone else's write won"
	}
	return fmt.Sprintf("push to %s: %v: %s; %s", e.Remote, kind, strings.Join(parts, ", "), fix)
}

// Is makes errors.Is(err, ErrConflict) and ErrRefused work.
func (e *RefError) Is(target error) bool {
	return target == ErrConflict && e.Conflict || target == ErrRefused && !e.Conflict
}

// Record is one record as last read. ID is its version (the commit id); a
// record that does not exist has ID "" and no Data.
type Record struct {
	Name string // under refs/orch/, e.g. "leases/main"
	ID   string
	Data []byte
}

// Ref is the record's ref on the remote.
func (r *Record) Ref() string { return Prefix + r.Name }

// Update is one ref change of a write. Ref is a full ref name (a record's
// Prefix+name, or a branch such as refs/heads/main in a fenced write).
// Old is the version expected on the remote ("" = the ref must not
// exist); New is the version to set ("" = delete the ref).
type Update struct {
	Ref      string
	Old, New string
}

// Store reads and writes the records of one remote from one local
// repository (which holds the fetched objects and the mirror refs).
type Store struct {
	gitDir string
	remote string
	ns     string // refs/orch-remote/<key>/
	lock   string // serialises this repository's writers of the mirror refs

	formatOnce sync.Once
	format     string
}

// plainRemoteName reports whether remote is a name usable as one ref
// component as it is: [A-Za-z0-9][A-Za-z0-9._-]*. (Checked by hand, not
// with a package-level regexp: compiling one cost every process, hooks
// included, 0.17 ms at start-up.)
func plainRemoteName(remote string) bool {
	for i := 0; i < len(remote); i++ {
		c := remote[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return remote != ""
}

// Open returns the store of remote (a remote's name or a URL) seen from the
// repository whose common git dir is gitDir.
func Open(gitDir, remote string) (*Store, error) {
	if remote == "" || strings.HasPrefix(remote, "-") || strings.ContainsAny(remote, "\x00\n\r") {
		return nil, fmt.Errorf("%w: remote %q: give a remote's name (git remote -v lists them) or a URL", gitstate.ErrBadName, remote)
	}
	key := remote
	if !plainRemoteName(remote) || strings.Contains(remote, "..") || strings.HasSuffix(remote, ".lock") {
		sum := sha256.Sum256([]byte(remote))
		key = "url-" + hex.EncodeToString(sum[:8])
	}
	return &Store{
		gitDir: gitDir,
		remote: remote,
		ns:     mirrorRoot + key + "/",
		lock:   filepath.Join(gitDir, "orch-remote-"+key+".lock"),
	}, nil
}

// Remote is the remote this store writes to.
func (s *Store) Remote() string { return s.remote }

// ValidateName checks a record name: a path of ref components under
// refs/orch/ that git accepts.
func ValidateName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return fmt.Errorf("%w: record name %q", gitstate.ErrBadName, name)
	}
	for _, part := range strings.Split(name, "/") {
		if err := gitstate.ValidateBranch(part); err != nil {
			return fmt.Errorf("record name %q: %w", name, err)
		}
	}
	return nil
}

func (s *Store) git(ctx context.Context, args ...string) (string, error) {
	return gitstate.Git(ctx, s.gitDir, args...)
}

// Fetch brings every record of the remote into the local mirror, and drops
// mirrored records the remote no longer has: one incremental fetch of
// refs/orch/* only (objects already here are not sent again).
func (s *Store) Fetch(ctx context.Context) error {
	unlock, err := statefile.Lock(ctx, s.lock)
	if err != nil {
		return fmt.Errorf("fetch records from %s: %w", s.remote, err)
	}
	defer unlock()
	// No auto-gc (a process per fetch; the repository's own git commands
	// pack these small objects in time) and no forced-update walk.
	_, err = s.git(ctx, "fetch", "--quiet", "--no-tags", "--prune", "--no-write-fetch-head",
		"--no-recurse-submodules", "--no-auto-gc", "--no-show-forced-updates",
		"--end-of-options", s.remote, "+"+Prefix+"*:"+s.ns+"*")
	if err != nil {
		return fmt.Errorf("fetch records from %s: %w: %v", s.remote, ErrUnreachable, err)
	}
	return nil
}

// Get returns the record name as of the last Fetch or Update of this
// repository (an ID of "" when there was none). Call Fetch first for the
// remote's current version; a stale answer is safe for a write (its
// compare-and-swap loses), never for a decision that writes nothing.
func (s *Store) Get(ctx context.Context, name string) (*Record, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	rec := &Record{Name: name}
	id, err := s.git(ctx, "rev-parse", "-q", "--verify", "--end-of-options", s.ns+name+"^{commit}")
	if err != nil {
		var ge *gitstate.GitError
		if errors.As(err, &ge) && ge.ExitCode == 1 {
			return rec, nil
		}
		return nil, fmt.Errorf("record %s: %w", name, err)
	}
	rec.ID = id
	data, err := gitstate.GitBytes(ctx, s.gitDir, nil, "cat-file", "blob", id+":"+FileName)
	if err != nil {
		return nil, fmt.Errorf("record %s (%s on %s): %s is missing from its commit: %w", name, short(id), s.remote, FileName, err)
	}
	rec.Data = data
	return rec, nil
}

// Read is Fetch then Get: the remote's current version of one record.
func (s *Store) Read(ctx context.Context, name string) (*Record, error) {
	if err := s.Fetch(ctx); err != nil {
		return nil, err
	}
	return s.Get(ctx, name)
}

// List returns the ids of the mirrored records under dir ("" for all), by
// record name (e.g. "leases/main"), as of the last Fetch.
func (s *Store) List(ctx context.Context, dir string) (map[string]string, error) {
	pattern := s.ns
	if dir != "" {
		if err := ValidateName(dir); err != nil {
			return nil, err
		}
		pattern += dir + "/"
	}
	out, err := s.git(ctx, "for-each-ref", "--format=%(objectname) %(refname)", "--end-of-options", pattern)
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	recs := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		id, ref, ok := strings.Cut(line, " ")
		if ok {
			recs[strings.TrimPrefix(ref, s.ns)] = id
		}
	}
	return recs, nil
}

// GetAll returns every mirrored record under dir ("" for all) as of the
// last Fetch, with its data, by record name: one for-each-ref and one
// `git cat-file --batch` for all of them, not a process per record. A
// record whose commit has no FileName has nil Data (an empty file is
// non-nil, empty Data).
func (s *Store) GetAll(ctx context.Context, dir string) (map[string]*Record, error) {
	ids, err := s.List(ctx, dir)
	if err != nil {
		return nil, err
	}
	recs := make(map[string]*Record, len(ids))
	if len(ids) == 0 {
		return recs, nil
	}
	names := make([]string, 0, len(ids))
	for name, id := range ids {
		names = append(names, name)
		recs[name] = &Record{Name: name, ID: id}
	}
	sort.Strings(names)
	// git answers the requests in the order they were written.
	var stdin bytes.Buffer
	for _, name := range names {
		fmt.Fprintf(&stdin, "%s:%s\n", recs[name].ID, FileName)
	}
	out, err := gitstate.GitBytes(ctx, s.gitDir, stdin.Bytes(), "cat-file", "--batch")
	if err != nil {
		return nil, fmt.Errorf("read records under %s%s: %w", Prefix, dir, err)
	}
	for _, name := range names {
		line, rest, ok := bytes.Cut(out, []byte("\n"))
		if !ok {
			return nil, fmt.Errorf("read record %s: git cat-file --batch ended early", name)
		}
		out = rest
		f := strings.Fields(string(line))
		if len(f) == 2 && f[1] == "missing" {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("read record %s: git cat-file --batch said %q", name, line)
		}
		size, err := strconv.Atoi(f[2])
		if err != nil || size < 0 || size+1 > len(out) {
			return nil, fmt.Errorf("read record %s: git cat-file --batch said %q with %d bytes left", name, line, len(out))
		}
		if f[1] == "blob" {
			recs[name].Data = append([]byte{}, out[:size]...)
		}
		out = out[size+1:]
	}
	return recs, nil
}

// signature fixes the identity of record commits: they are machine
// records, not anyone's work, and a repository without a configured
// identity must still be able to write them.
var signature = []string{
	"GIT_AUTHOR_NAME=orch-hooks", "GIT_AUTHOR_EMAIL=orch-hooks@localhost",
	"GIT_COMMITTER_NAME=orch-hooks", "GIT_COMMITTER_EMAIL=orch-hooks@localhost",
}

// Prepare writes (locally, not on the remote) a new version of record
// name holding data, whose parent is parent ("" for a first version), and
// returns its id, for an Update. Nothing is visible to anyone until the
// Update lands.
func (s *Store) Prepare(ctx context.Context, name string, data []byte, parent string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	if parent != "" && !isHexID(parent) {
		return "", fmt.Errorf("record %s: parent %q is not an object id", name, parent)
	}
	now := time.Now().Unix()
	msg, err := versionMessage(name)
	if err != nil {
		return "", fmt.Errorf("record %s: %w", name, err)
	}
	if s.objectFormat(ctx) == "sha1" {
		id, err := s.prepareLoose(msg, data, parent, now)
		if err != nil {
			return "", fmt.Errorf("record %s: write its objects in %s: %w", name, s.gitDir, err)
		}
		return id, nil
	}
	blob, err := gitstate.GitEnvOut(ctx, s.gitDir, nil, data, "hash-object", "-w", "--stdin")
	if err != nil {
		return "", fmt.Errorf("record %s: %w", name, err)
	}
	tree, err := gitstate.GitEnvOut(ctx, s.gitDir, nil, []byte("100644 blob "+blob+"\t"+FileName+"\n"), "mktree")
	if err != nil {
		return "", fmt.Errorf("record %s: %w", name, err)
	}
	args := []string{"commit-tree", tree}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	env := append(signature, fmt.Sprintf("GIT_COMMITTER_DATE=@%d +0000", now),
		fmt.Sprintf("GIT_AUTHOR_DATE=@%d +0000", now))
	id, err := gitstate.GitEnvOut(ctx, s.gitDir, env, []byte(msg), args...)
	if err != nil {
		return "", fmt.Errorf("record %s: %w", name, err)
	}
	return strings.TrimSpace(id), nil
}

// versionMessage is the commit message of a new version of record name.
// Its random line makes every prepared version a distinct object. Without
// it two writers that prepare the same record with the same data in the
// same second make the same commit, and the second one's create (or
// swap) "succeeds": git reports a push of the id the remote already holds
// as up to date, before it checks the expected old value. Both writers
// would then believe they won.
func versionMessage(name string) (string, error) {
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("a version id: %w", err)
	}
	return fmt.Sprintf("orch: %s\n\nversion %x\n", name, nonce), nil
}

// PushOptions are extra options of a write.
type PushOptions struct {
	// Options are sent with `git push -o` (the server's hooks see them as
	// GIT_PUSH_OPTION_*; the server must advertise push options).
	Options []string
}

// Update applies ups on the remote as one compare-and-swap: all of them
// land or none does (--atomic). On success the mirror is brought up to
// date for the records among them. A lost compare-and-swap is a *RefError
// matching ErrConflict; a refusal for another reason one matching
// ErrRefused; a transport failure wraps ErrUnreachable.
func (s *Store) Update(ctx context.Context, ups []Update, opts PushOptions) error {
	if len(ups) == 0 {
		return nil
	}
	args := []string{"push", "--porcelain", "--atomic", "--no-verify", "--no-recurse-submodules"}
	for _, o := range opts.Options {
		args = append(args, "--push-option="+o)
	}
	var specs []string
	for _, u := range ups {
		if !strings.HasPrefix(u.Ref, "refs/") || strings.ContainsAny(u.Ref, ": \t\n\x00") {
			return fmt.Errorf("%w: ref %q: a full ref name is needed (refs/...)", gitstate.ErrBadName, u.Ref)
		}
		args = append(args, "--force-with-lease="+u.Ref+":"+u.Old)
		specs = append(specs, u.New+":"+u.Ref)
	}
	args = append(args, "--end-of-options", s.remote)
	args = append(args, specs...)
	out, err := s.git(ctx, args...)
	if err != nil {
		if rej := parseRejections(out); len(rej) > 0 {
			var ge *gitstate.GitError
			stderr := ""
			if errors.As(err, &ge) {
				stderr = ge.Stderr
			}
			return &RefError{Remote: s.remote, Conflict: isConflict(rej, stderr), Refs: rej}
		}
		return fmt.Errorf("push to %s: %w: %v; nothing was written if the remote was never reached, else read again to learn whether it landed", s.remote, ErrUnreachable, err)
	}
	if rej := parseRejections(out); len(rej) > 0 {
		// git exits 0 only when every ref landed; be safe anyway.
		return &RefError{Remote: s.remote, Conflict: isConflict(rej, ""), Refs: rej}
	}
	s.mirror(ctx, ups)
	return nil
}

// mirror records in the local namespace what a successful write set, so a
// Get right after it reads it without a fetch. Best effort: a stale mirror
// only makes a later compare-and-swap lose and re-read.
func (s *Store) mirror(ctx context.Context, ups []Update) {
	var stdin strings.Builder
	for _, u := range ups {
		if !strings.HasPrefix(u.Ref, Prefix) {
			continue
		}
		local := s.ns + strings.TrimPrefix(u.Ref, Prefix)
		if u.New == "" {
			fmt.Fprintf(&stdin, "delete %s\n", local)
		} else {
			fmt.Fprintf(&stdin, "update %s %s\n", local, u.New)
		}
	}
	if stdin.Len() == 0 {
		return
	}
	unlock, err := statefile.Lock(ctx, s.lock)
	if err != nil {
		return
	}
	defer unlock()
	gitstate.GitEnvOut(ctx, s.gitDir, nil, []byte(stdin.String()), "update-ref", "--stdin")
}

// parseRejections returns the refs git push --porcelain reports rejected
// ("!" lines), with git's reason.
func parseRejections(porcelain string) map[string]string {
	rej := map[string]string{}
	for _, line := range strings.Split(porcelain, "\n") {
		if !strings.HasPrefix(line, "!\t") {
			continue
		}
		f := strings.SplitN(line, "\t", 3)
		if len(f) < 3 {
			continue
		}
		_, ref, _ := strings.Cut(f[1], ":")
		rej[ref] = strings.TrimSpace(f[2])
	}
	return rej
}

// isConflict tells a lost compare-and-swap from another refusal. The
// client's own check against the advertised refs says "stale info" (or,
// for the other refs of an atomic push, "atomic push failed"). When
// another push came between the advertisement and the update, the
// server's ref transaction fails instead: the ref says "failed to update
// ref" or, atomic, "atomic transaction failed", and the server's stderr
// says why ("cannot lock ref ...: is at X but expected Y", or the lock
// held by that other push at that instant): a conflict too. A refusal by
// a hook or by permissions is not a conflict.
func isConflict(rej map[string]string, stderr string) bool {
	lockLost := strings.Contains(stderr, "cannot lock ref") || strings.Contains(stderr, "but expected") ||
		strings.Contains(stderr, "reference already exists") || strings.Contains(stderr, "File exists")
	conflict := false
	for _, why := range rej {
		switch {
		case strings.Contains(why, "stale info"), strings.Contains(why, "fetch first"),
			strings.Contains(why, "non-fast-forward"), strings.Contains(why, "already exists"):
			conflict = true
		case strings.Contains(why, "atomic transaction failed"), strings.Contains(why, "failed to update ref"),
			strings.Contains(why, "failed to lock"):
			if !lockLost {
				return false
			}
			conflict = true
		case strings.Contains(why, "atomic push failed"):
			// a bystander of another ref's failure
		default:
			return false
		}
	}
	return conflict
}

func isHexID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	return strings.Trim(s, "0123456789abcdef") == ""
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
