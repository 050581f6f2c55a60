package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	orchhooks "github.com/orch-hooks/orch-hooks"
	"github.com/orch-hooks/orch-hooks/statefile"
)

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "orch.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func clearEnv(t *testing.T) {
	for _, k := range []string{"ORCH_HOOKS_BUDGET_MS", "ORCH_REAPER_ENABLED", "ORCH_REAPER_INTERVAL_S", "ORCH_REAPER_DEAD_TICKS",
		"ORCH_REAPER_MAX_RUNNING_S", "ORCH_REAPER_FINALIZE_GRACE_S", "ORCH_LEASE_RECLAIM_ENABLED", "ORCH_LEASE_TTL_S"} {
		t.Setenv(k, "")
	}
}

// The example documents every key with its default: parsing it must give
// the defaults, plus its two stages.
func TestExampleIsTheDefaults(t *testing.T) {
	clearEnv(t)
	c, err := Load(write(t, orchhooks.ExampleConfig), true)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Path = c.Path
	want.Stages = []Stage{
		{Name: "implement", Kind: KindCommand, Run: `sh "$ORCH_REPO_ROOT/agent.sh"`, Gates: []string{"commits_ahead", "cmd:go test ./..."},
			Finalize: []string{"git push origin HEAD"}, FinalizeTimeoutS: 120, Next: "merge"},
		{Name: "merge", Kind: KindMerge, Gates: []string{"mergeable"}, FinalizeTimeoutS: FinalizeTimeoutSDefault},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Fatalf("example config (-want +got):\n%s", diff)
	}
}

func TestMissingFileIsDefaults(t *testing.T) {
	clearEnv(t)
	c, err := Load(filepath.Join(t.TempDir(), "orch.toml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Default(), c); diff != "" {
		t.Fatal(diff)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "named.toml"), true); err == nil {
		t.Fatal("a missing file named by --config is not an error")
	}
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		name, toml string
		line       int
		key, msg   string
	}{
		{"syntax", "target = \"main\"\nmax_concurrency = = 2\n", 2, "max_concurrency", "expected value"},
		{"wrong type", "target = \"main\"\nmax_concurrency = \"two\"\n", 2, "max_concurrency", "incompatible types"},
		{"unknown top key", "target = \"main\"\n\ntargte = \"x\"\n", 3, "targte", "unknown key"},
		{"unknown table key", "[reaper]\nenabled = true\nbogus = 1\n", 3, "reaper.bogus", "unknown key"},
		{"unknown stage key", "[[stages]]\nname = \"a\"\nrun = \"x\"\nrunn = \"y\"\n", 4, "stages.runn", "unknown key"},
		{"dead ticks", "[reaper]\ndead_ticks = 0\n", 2, "reaper.dead_ticks", "at least 1"},
		{"concurrency", "max_concurrency = 0\n", 1, "max_concurrency", "at least 1"},
		{"bad target", "target = \"../x\"\n", 1, "target", "\"..\""},
		{"stage name", "[[stages]]\nname = \"a/b\"\nrun = \"x\"\n", 2, "stages.0.name", "stage"},
		{"duplicate stage", "[[stages]]\nname = \"a\"\nrun = \"x\"\n[[stages]]\nname = \"a\"\nrun = \"y\"\n", 5, "stages.1.name", "defined twice"},
		{"no run", "[[stages]]\nname = \"a\"\n", 1, "stages.0.run", "no command"},
		{"merge with run", "[[stages]]\nname = \"m\"\nkind = \"merge\"\nrun = \"x\"\n", 4, "stages.0.run", "merge stage"},
		{"bad kind", "[[stages]]\nname = \"a\"\nkind = \"shell\"\nrun = \"x\"\n", 3, "stages.0.kind", "unknown stage kind"},
		{"bad gate", "[[stages]]\nname = \"a\"\nrun = \"x\"\ngates = [\"fast\"]\n", 4, "stages.0.gates", "unknown gate"},
		{"empty cmd gate", "[[stages]]\nname = \"a\"\nrun = \"x\"\ngates = [\"cmd: \"]\n", 4, "stages.0.gates", "empty command"},
		{"unknown next", "[[stages]]\nname = \"a\"\nrun = \"x\"\nnext = \"b\"\n", 4, "stages.0.next", "not defined"},
		{"cycle", "[[stages]]\nname = \"a\"\nrun = \"x\"\nnext = \"b\"\n[[stages]]\nname = \"b\"\nrun = \"y\"\nnext = \"a\"\n", 4, "stages.0.next", "never end"},
		{"self cycle", "[[stages]]\nname = \"a\"\nrun = \"x\"\nnext = \"a\"\n", 4, "stages.0.next", "never end"},
		{"timeout", "[[stages]]\nname = \"a\"\nrun = \"x\"\nfinalize_timeout_s = 0\n", 4, "stages.0.finalize_timeout_s", "at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := write(t, tc.toml)
			_, err := Load(path, true)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load = %v, want *config.Error", err)
			}
			if ce.File != path || ce.Line != tc.line || ce.Key != tc.key || !strings.Contains(ce.Msg, tc.msg) {
				t.Fatalf("got file %s line %d key %q msg %q\nwant line %d key %q msg containing %q", ce.File, ce.Line, ce.Key, ce.Msg, tc.line, tc.key, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), path+":") {
				t.Fatalf("message %q does not start with the file", err)
			}
		})
	}
}

func TestEnvironmentOverridesWin(t *testing.T) {
	clearEnv(t)
	path := write(t, "[reaper]\ndead_ticks = 5\nenabled = true\n[lease]\nttl_s = 60\n")
	t.Setenv("ORCH_REAPER_DEAD_TICKS", "1")
	t.Setenv("ORCH_REAPER_ENABLED", "0")
	t.Setenv("ORCH_LEASE_TTL_S", "7")
	t.Setenv("ORCH_REAPER_INTERVAL_S", "0")
	c, err := Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Reaper.DeadTicks != 1 || c.Reaper.Enabled || c.Lease.TTLS != 7 || c.Reaper.IntervalS != 0 {
		t.Fatalf("overrides not applied: %+v %+v", c.Reaper, c.Lease)
	}
	for env, val := range map[string]string{"ORCH_REAPER_DEAD_TICKS": "abc", "ORCH_REAPER_ENABLED": "maybe", "ORCH_LEASE_TTL_S": "0"} {
		t.Run(env, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(env, val)
			_, err := Load(path, true)
			var ce *Error
			if !errors.As(err, &ce) || ce.Key != env {
				t.Fatalf("Load with %s=%s: %v, want an error naming the variable", env, val, err)
			}
		})
	}
}

// An orch.toml larger than statefile.MaxSizeDefault is refused unread, with
// an error naming the file and the cap, even when it would parse.
func TestOversizedFileIsRefused(t *testing.T) {
	path := write(t, strings.Repeat("# padding\n", statefile.MaxSizeDefault/10+1)+"target = \"main\"\n")
	_, err := Load(path, true)
	var ce *Error
	if !errors.As(err, &ce) || ce.File != path || !strings.Contains(ce.Msg, "cap") || !strings.Contains(ce.Msg, "remove or restore it") {
		t.Fatalf("Load of an oversized file: %v, want a *config.Error naming %s and the cap", err, path)
	}
}

// A finalize_grace_s shorter than a stage's finalize_timeout_s is a warning,
// not an error: the file loads, and the warning names the file, the line
// and key of the grace (or the variable that set it) and the stage. Stages
// without finalize steps, and a grace as long as the timeout, warn nothing.
func TestWarnGraceShorterThanFinalizeTimeout(t *testing.T) {
	clearEnv(t)
	const file = `[reaper]
finalize_grace_s = 60

[[stages]]
name = "build"
run = "true"
finalize = ["git push origin HEAD"]
finalize_timeout_s = 120

[[stages]]
name = "quick"
run = "true"
finalize = ["true"]
finalize_timeout_s = 60

[[stages]]
name = "nofinalize"
run = "true"
finalize_timeout_s = 600
`
	path := write(t, file)
	c, err := Load(path, true)
	if err != nil {
		t.Fatalf("a warning stopped the load: %v", err)
	}
	if len(c.Warnings) != 1 {
		t.Fatalf("warnings %v, want one (stage build)", c.Warnings)
	}
	w := c.Warnings[0].Error()
	for _, part := range []string{path + ":2: reaper.finalize_grace_s: ", `stage "build"`, "finalize_timeout_s = 120", "raise finalize_grace_s to at least 120"} {
		if !strings.Contains(w, part) {
			t.Errorf("warning %q does not say %q", w, part)
		}
	}

	t.Setenv("ORCH_REAPER_FINALIZE_GRACE_S", "1")
	c, err = Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 2 || !strings.HasPrefix(c.Warnings[0].Error(), "ORCH_REAPER_FINALIZE_GRACE_S: 1 s is shorter") {
		t.Errorf("with the override: %v; want both stages with steps, against the variable", c.Warnings)
	}

	t.Setenv("ORCH_REAPER_FINALIZE_GRACE_S", "120")
	if c, err = Load(path, true); err != nil || len(c.Warnings) != 0 {
		t.Errorf("grace = the longest timeout: %v, %v; want no warning", c.Warnings, err)
	}
}

func TestRemoteSection(t *testing.T) {
	clearEnv(t)
	c, err := Load(write(t, "[remote]\nname = \"origin\"\nclock_skew_s = 5\nserver_hook = true\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Remote.Enabled() || c.Remote.Name != "origin" || c.Remote.ClockSkew() != 5*time.Second || !c.Remote.ServerHook {
		t.Fatalf("remote section read as %+v", c.Remote)
	}
	if d := Default(); d.Remote.Enabled() {
		t.Fatal("remote mode is on by default")
	}
	for _, tc := range []struct{ body, want string }{
		{"[remote]\nname = \"--upload-pack=x\"\n", ":2: remote.name: "},
		{"[remote]\nname = \"a b\"\n", ":2: remote.name: "},
		{"[remote]\nclock_skew_s = -1\n", ":2: remote.clock_skew_s: must be at least 0"},
		{"[remote]\nurl = \"x\"\n", ":2: remote.url: unknown key"},
	} {
		_, err := Load(write(t, tc.body), true)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
}
