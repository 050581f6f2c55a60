package gitstate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// ErrBadName is wrapped by every name validation error, so the command line
// can report it as a usage error (exit 2).
var ErrBadName = errors.New("invalid name")

func badName(kind, name, why, fix string) error {
	return fmt.Errorf("%w: %s %q %s; %s", ErrBadName, kind, name, why, fix)
}

// ValidateBranch accepts a branch name as a person types it: a name that
// git check-ref-format --branch takes and prints back unchanged (gitRefRule),
// that is valid UTF-8, and that names nothing but the branch wherever git
// reads a revision (ambiguousBranch): not "@" (git's shorthand for HEAD) and
// not a full ref name such as refs/heads/x (which git would make
// refs/heads/refs/heads/x). A name is refused here, at enqueue, rather than
// by the first git command that runs with it.
func ValidateBranch(name string) error {
	return validateRefLike("branch", name)
}

// ValidateTask applies the branch rules to a task name: a task is named after
// its branch by default, and reaches file names only through JobID.
func ValidateTask(name string) error {
	return validateRefLike("task", name)
}

func validateRefLike(kind, name string) error {
	fix := "use a name git accepts for a branch (git check-ref-format --branch)"
	switch {
	case name == "":
		return badName(kind, name, "is empty", "give a name")
	case strings.HasPrefix(name, "refs/"):
		short := name
		for _, p := range []string{"refs/heads/", "refs/remotes/", "refs/"} {
			if strings.HasPrefix(name, p) {
				short = strings.TrimPrefix(name, p)
				break
			}
		}
		return badName(kind, name, "is a full ref name, not a branch name (git would make it refs/heads/"+name+")",
			fmt.Sprintf("give the name without its refs/.../ prefix, e.g. %q", short))
	case name == "HEAD" || name == "@":
		return badName(kind, name, "names the current checkout, not a branch",
			"give the branch's own name (git branch --show-current prints it)")
	}
	if why := gitRefRule(name); why != "" {
		return badName(kind, name, why, fix)
	}
	if !utf8.ValidString(name) {
		return badName(kind, name, "is not valid UTF-8", fix+", in UTF-8")
	}
	return nil
}

// gitRefRule is git's own rule for a branch name, as git check-ref-format
// --branch applies it (strbuf_check_branch_ref and check_refname_format in
// git's refs.c): "refs/heads/"+name must be a valid ref name, the name must
// not start with '-' and must not be HEAD. It returns why name is refused,
// or "" when git takes it. It works on bytes, as git does: bytes that are
// not UTF-8 pass here (ValidateBranch refuses them on its own account).
// TestGitRefRuleMatchesGit holds it against git over many names.
func gitRefRule(name string) string {
	switch {
	case name == "":
		return "is empty"
	case name[0] == '-':
		return "starts with '-'"
	case name == "HEAD":
		return "is HEAD"
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		switch {
		case b < 0x20 || b == 0x7f:
			return "contains a control character"
		case strings.IndexByte(" ~^:?*[\\", b) >= 0:
			return fmt.Sprintf("contains %q", b)
		case b == '.' && i > 0 && name[i-1] == '.':
			return "contains \"..\""
		case b == '{' && i > 0 && name[i-1] == '@':
			return "contains \"@{\""
		}
	}
	for _, c := range strings.Split(name, "/") {
		if c == "" {
			return "has an empty path component (a leading, trailing or doubled '/')"
		}
		if c[0] == '.' {
			return "has a component that starts with '.'"
		}
		if strings.HasSuffix(c, ".lock") {
			return "has a component that ends with \".lock\""
		}
	}
	if strings.HasSuffix(name, ".") {
		return "ends with '.'"
	}
	return ""
}

// ValidateStage accepts stage names that are safe as a file name component:
// letters, digits, '-', '_' and '.', not starting with '.' or '-'.
func ValidateStage(name string) error {
	return validateComponent("stage", name)
}

// ValidateJobID accepts what JobID produces and anything else of the same
// alphabet; ids reach file names directly.
func ValidateJobID(id string) error {
	return validateComponent("job id", id)
}

func validateComponent(kind, name string) error {
	fix := "use only letters, digits, '-', '_' and '.'"
	if name == "" {
		return badName(kind, name, "is empty", "give a name")
	}
	if len(name) > 200 {
		return badName(kind, name, "is longer than 200 bytes", "use a shorter name")
	}
	if name[0] == '.' || name[0] == '-' {
		return badName(kind, name, "starts with '.' or '-'", fix)
	}
	if strings.Contains(name, "..") {
		return badName(kind, name, "contains \"..\"", fix)
	}
	for i := 0; i < len(name); i++ {
		if !componentByte(name[i]) {
			// The character, not its first byte: "実" is not 'å'.
			what := fmt.Sprintf("%q", name[i])
			if r, size := utf8.DecodeRuneInString(name[i:]); size > 1 {
				what = fmt.Sprintf("%q", r)
			} else if name[i] >= utf8.RuneSelf {
				what = fmt.Sprintf(`'\x%02x'`, name[i]) // not UTF-8
			}
			return badName(kind, name, "contains "+what, fix)
		}
	}
	return nil
}

func componentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// JobID derives the id of the job that runs attempt of stage for task. It is
// deterministic, so enqueuing the same job twice finds the first, and an
// advance that is repeated after a crash cannot create a second next job.
// The readable part is the task and stage with unsafe bytes replaced; the
// hash of the exact triple keeps tasks that differ only in those bytes
// ("feat/a" and "feat-a") apart.
func JobID(task, stage string, attempt int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%d", task, stage, attempt)))
	return fmt.Sprintf("%s.%s.%d.%s", slug(task), slug(stage), attempt, hex.EncodeToString(sum[:4]))
}

// slug maps a name to the id alphabet, collapsing runs of other bytes to '-'
// and keeping it short enough for file names.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for i := 0; i < len(s) && b.Len() < 60; i++ {
		c := s[i]
		if componentByte(c) && c != '.' {
			b.WriteByte(c)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-")
	if out == "" {
		return "x"
	}
	return out
}

// RefFileName maps a branch name to a single file name component: '/' is
// not allowed in one, so it is written %2F, and '%' itself %25. Distinct
// branches get distinct names.
func RefFileName(branch string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(branch)
}

// RefFromFileName inverts RefFileName.
func RefFromFileName(name string) string {
	return strings.NewReplacer("%2F", "/", "%25", "%").Replace(name)
}

// RemoteTrackingHint explains a branch name that is not a local branch but
// is a remote-tracking one (origin/x with refs/remotes/origin/x and no
// refs/heads/origin/x): the mistake of naming what git branch -r lists.
// It says what orch-hooks wants instead, a local branch, and how to make
// it; "" when branch exists locally or names no remote-tracking ref.
func (r *Repo) RemoteTrackingHint(branch string) string {
	if ValidateBranch(branch) != nil {
		return ""
	}
	if _, ok, err := r.readRef("refs/heads/" + branch); err != nil || ok {
		return ""
	}
	_, ok, err := r.readRef("refs/remotes/" + branch)
	if err != nil {
		// Not a plain ref: a symbolic one such as origin/HEAD is still
		// a remote-tracking name, and no branch to make.
		_, serr := os.Lstat(filepath.Join(r.CommonDir, "refs", "remotes", filepath.FromSlash(branch)))
		ok = serr == nil
	}
	if !ok {
		return ""
	}
	_, local, _ := strings.Cut(branch, "/")
	if local == "HEAD" {
		return fmt.Sprintf("%s is the remote's default-branch pointer (refs/remotes/%s), not a branch; give a local branch name", branch, branch)
	}
	return fmt.Sprintf("%s is a remote-tracking branch (refs/remotes/%s), not a local one; orch-hooks works on local branches: git branch %s %s, then --branch %s",
		branch, branch, local, branch, local)
}
