package gitstate

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecodeJob: any bytes either fail to decode or decode to a job that
// re-encodes and decodes to the same job. Never a panic.
func FuzzDecodeJob(f *testing.F) {
	f.Add([]byte("version = 1\nid = \"t.s.1.00000000\"\nstatus = \"queued\"\n"))
	f.Add([]byte("id = \"a\"\nstatus = \"running\"\nexit_code = 3\n[monitor]\npid = 4\nstart_time = 9\n"))
	f.Add([]byte("id = \"a\"\nstatus = \"done\"\n[[history]]\nto = \"done\"\n[[gates]]\nname = \"x\"\npassed = true\n"))
	f.Add([]byte("\x00\x01garbage"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := DecodeJob(data)
		if err != nil {
			return
		}
		enc, err := encodeJob(j)
		if err != nil {
			t.Fatalf("decoded job does not encode: %v", err)
		}
		j2, err := DecodeJob(enc)
		if err != nil {
			t.Fatalf("re-encoded job does not decode: %v\n%s", err, enc)
		}
		if diff := cmp.Diff(j, j2); diff != "" {
			t.Fatalf("round trip changed the job:\n%s", diff)
		}
	})
}

// FuzzNames: whatever validation accepts is safe in a path, and JobID always
// yields a valid id.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"feat/a", "../x", "a/../../b", "-rf", "x\x00y", "ü/ñ", "a..b", ".git", "a/./b"} {
		f.Add(s, "implement", 1)
	}
	f.Fuzz(func(t *testing.T, name, stage string, attempt int) {
		if ValidateBranch(name) == nil {
			if strings.Contains(name, "..") || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "/") {
				t.Fatalf("ValidateBranch accepted %q", name)
			}
			for _, r := range name {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("ValidateBranch accepted a control character in %q", name)
				}
			}
			base := "/base"
			if p := filepath.Join(base, name); !strings.HasPrefix(p, base+"/") {
				t.Fatalf("branch %q escapes its directory: %s", name, p)
			}
		}
		if ValidateStage(stage) == nil && strings.ContainsAny(stage, "/\\\x00") {
			t.Fatalf("ValidateStage accepted %q", stage)
		}
		if ValidateJobID(stage) == nil {
			if p := filepath.Join("/base", stage); filepath.Dir(p) != "/base" {
				t.Fatalf("job id %q escapes its directory", stage)
			}
		}
		if id := JobID(name, stage, attempt); ValidateJobID(id) != nil {
			t.Fatalf("JobID(%q, %q, %d) = %q is not a valid id: %v", name, stage, attempt, id, ValidateJobID(id))
		}
	})
}
