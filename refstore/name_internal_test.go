package refstore

import (
	"regexp"
	"testing"
)

// TestPlainRemoteNameIsTheRegexp: the hand-written check accepts exactly
// what ^[A-Za-z0-9][A-Za-z0-9._-]*$ does.
func TestPlainRemoteNameIsTheRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	names := []string{"", "origin", "o", "0", "up-stream_2.x", "-x", ".x", "_x", "a/b", "a b", "a:b",
		"https://h/r.git", "é", "a\x00", "a..b", "x.lock", "A-", "z.", "a\n"}
	for b := 0; b < 256; b++ {
		names = append(names, string(rune(b)), "a"+string([]byte{byte(b)}), string([]byte{byte(b)})+"a")
	}
	for _, n := range names {
		if got, want := plainRemoteName(n), re.MatchString(n); got != want {
			t.Errorf("plainRemoteName(%q) = %v, the regexp says %v", n, got, want)
		}
	}
}
