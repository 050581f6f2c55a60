package gitstate

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrBadName is wrapped by every name validation error, so the command line
// can report it as a usage error (exit 2).
var ErrBadName = errors.New("invalid name")

func badName(kind, name, why, fix string) error {
	return fmt.Errorf("%w: %s %q %s; %s", ErrBadName, kind, name, why, fix)
}

// ValidateBranch accepts the branch names git accepts (git-check-ref-format
// with --branch), except that a leading '-' is refused too, so a branch name
// can never be read as an option by a git command.
func ValidateBranch(name string) error {
	return validateRefLike("branch", name)
}

// ValidateTask applies the branch rules to a task name: a task is named after
// its branch by default, and reaches file names only through JobID.
func ValidateTask(name string) error {
	return validateRefLike("task", name)
}

func validateRefLike(kind, name string) error {
	fix := "use a name git accepts for a branch (git check-ref-format --branch), not starting with '-'"
	switch {
	case name == "":
		return badName(kind, name, "is empty", "give a name")
	case !utf8.ValidString(name):
		return badName(kind, name, "is not valid UTF-8", fix)
	case strings.HasPrefix(name, "-"):
		return badName(kind, name, "starts with '-'", fix)
	case strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/"):
		return badName(kind, name, "starts or ends with '/'", fix)
	case strings.Contains(name, ".."):
		return badName(kind, name, "contains \"..\"", fix)
	case strings.Contains(name, "//"):
		return badName(kind, name, "contains \"//\"", fix)
	case strings.Contains(name, "@{") || name == "@":
		return badName(kind, name, "contains \"@{\" or is \"@\"", fix)
	case strings.HasSuffix(name, "."):
		return badName(kind, name, "ends with '.'", fix)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return badName(kind, name, "contains a control character", fix)
		}
		if strings.ContainsRune(" ~^:?*[\\", r) {
			return badName(kind, name, fmt.Sprintf("contains %q", r), fix)
		}
	}
	for _, c := range strings.Split(name, "/") {
		if strings.HasPrefix(c, ".") || strings.HasSuffix(c, ".lock") {
			return badName(kind, name, "has a component that starts with '.' or ends with \".lock\"", fix)
		}
	}
	return nil
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
