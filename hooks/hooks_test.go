package hooks_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/hooks"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/pipeline"
	"github.com/orch-hooks/orch-hooks/pipelinetest"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// fileState is what uninstall must restore exactly: the bytes, the mode,
// and for a symlink its target.
type fileState struct {
	Mode    fs.FileMode
	Content string
	Link    string
}

// snapshotDir records every entry of dir.
func snapshotDir(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]fileState{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fileState{Mode: fi.Mode()}
		if fi.Mode()&fs.ModeSymlink != 0 {
			st.Link, err = os.Readlink(p)
		} else {
			var b []byte
			b, err = os.ReadFile(p)
			st.Content = string(b)
		}
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = st
	}
	return out
}

func writeFile(t *testing.T, path, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; the tests need it exact.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func changes(cs []hooks.Change) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Hook+": "+c.Action)
	}
	return out
}

func TestScriptIsOurs(t *testing.T) {
	for _, name := range hooks.Names {
		s := hooks.Script(name, true)
		if !hooks.IsOurs(s) {
			t.Errorf("Script(%s) is not recognised as ours:\n%s", name, s)
		}
		if !bytes.HasPrefix(s, []byte("#!/bin/sh\n")) {
			t.Errorf("Script(%s) does not start with #!/bin/sh", name)
		}
		if !bytes.Contains(s, []byte(" hook "+name+" ")) {
			t.Errorf("Script(%s) does not run `hook %s`:\n%s", name, name, s)
		}
	}
	for _, foreign := range []string{
		"",
		"#!/bin/sh\n",
		"#!/bin/sh\necho hi\n",
		hooks.Marker + "\n#!/bin/sh\n",        // marker on the first line
		"#!/bin/sh\n\n" + hooks.Marker + "\n", // marker on the third line
		"#!/bin/sh\n # orch-hooks: managed hook\n",     // indented: not ours
		"\x00\x01binary\n" + "\xff\xfe" + "\n\x00\x00", // a compiled hook
	} {
		if hooks.IsOurs([]byte(foreign)) {
			t.Errorf("IsOurs(%q) = true, want false", foreign)
		}
	}
}

func TestInstallUninstallRestoresExactly(t *testing.T) {
	dir := t.TempDir()
	// A user's hook with an unusual mode and no final newline, a hook that
	// is a symlink, and an unrelated sample that must be left alone.
	writeFile(t, filepath.Join(dir, "post-commit"), "#!/bin/sh\necho mine\nexit 0", 0o750)
	writeFile(t, filepath.Join(dir, "shared-rewrite"), "#!/bin/sh\necho rewrite\n", 0o755)
	if err := os.Symlink("shared-rewrite", filepath.Join(dir, "post-rewrite")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "pre-commit.sample"), "#!/bin/sh\n", 0o644)
	before := snapshotDir(t, dir)

	got, err := hooks.Install(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"post-commit: chained", "post-merge: installed", "post-checkout: installed", "post-rewrite: chained"}
	if diff := cmp.Diff(want, changes(got)); diff != "" {
		t.Errorf("Install changes (-want +got):\n%s", diff)
	}
	after := snapshotDir(t, dir)
	for _, name := range hooks.Names {
		st := after[name]
		if st.Mode != 0o755 || st.Content != string(hooks.Script(name, false)) {
			t.Errorf("%s after install: mode %v, content:\n%s\nwant mode 0755 and Script(%s)", name, st.Mode, st.Content, name)
		}
	}
	if diff := cmp.Diff(before["post-commit"], after["post-commit"+hooks.ChainedSuffix]); diff != "" {
		t.Errorf("chained post-commit differs from the original (-orig +chained):\n%s", diff)
	}
	if diff := cmp.Diff(before["post-rewrite"], after["post-rewrite"+hooks.ChainedSuffix]); diff != "" {
		t.Errorf("chained post-rewrite symlink differs from the original (-orig +chained):\n%s", diff)
	}
	if diff := cmp.Diff(before["pre-commit.sample"], after["pre-commit.sample"]); diff != "" {
		t.Errorf("an unrelated file changed:\n%s", diff)
	}

	got, err = hooks.Uninstall(dir)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"post-commit: removed", "post-commit: restored", "post-merge: removed",
		"post-checkout: removed", "post-rewrite: removed", "post-rewrite: restored"}
	if diff := cmp.Diff(want, changes(got)); diff != "" {
		t.Errorf("Uninstall changes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, snapshotDir(t, dir)); diff != "" {
		t.Errorf("after uninstall the hooks dir is not what it was (-before +after):\n%s", diff)
	}

	// Uninstalling again finds nothing of ours and changes nothing.
	got, err = hooks.Uninstall(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"post-commit: kept", "post-rewrite: kept"}, changes(got)); diff != "" {
		t.Errorf("second Uninstall (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, snapshotDir(t, dir)); diff != "" {
		t.Errorf("second uninstall changed the dir (-before +after):\n%s", diff)
	}
}

func TestInstallTwiceChangesNothing(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "post-merge"), "#!/bin/sh\necho merged\n", 0o755)
	if _, err := hooks.Install(dir, false); err != nil {
		t.Fatal(err)
	}
	first := snapshotDir(t, dir)
	var mtimes []time.Time
	for _, n := range hooks.Names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		mtimes = append(mtimes, fi.ModTime())
	}
	got, err := hooks.Install(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"post-commit: unchanged", "post-merge: unchanged", "post-checkout: unchanged", "post-rewrite: unchanged"}
	if diff := cmp.Diff(want, changes(got)); diff != "" {
		t.Errorf("second Install (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(first, snapshotDir(t, dir)); diff != "" {
		t.Errorf("second install changed the dir (-first +second):\n%s", diff)
	}
	for i, n := range hooks.Names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(mtimes[i]) {
			t.Errorf("%s was rewritten by the second install", n)
		}
	}
}

// oldScript is a hook as orch-hooks wrote it before its scripts found the
// binary on PATH: ours (the marker), with this machine's absolute path.
const oldScript = `#!/bin/sh
# orch-hooks: managed hook (post-commit), written by orch-hooks install; orch-hooks uninstall removes it.
status=0
chained="${0%/*}/post-commit.orch-hooks-chained"
if [ -x "$chained" ]; then
	"$chained" "$@"
	status=$?
fi
if [ "${ORCH_HOOKS:-1}" != 0 ]; then
	bin='/home/me/go/bin/orch-hooks'
	if [ -x "$bin" ]; then
		"$bin" hook post-commit "$@" </dev/null
	fi
fi
exit $status
`

func TestInstallUpdatesOurOutdatedHook(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "post-commit"), "#!/bin/sh\necho mine\n", 0o755)
	if _, err := hooks.Install(dir, false); err != nil {
		t.Fatal(err)
	}
	// An older version's hook, naming a binary by its absolute path,
	// replaces ours; and our hook with a mode someone changed counts as
	// outdated too.
	writeFile(t, filepath.Join(dir, "post-commit"), oldScript, 0o755)
	if err := os.Chmod(filepath.Join(dir, "post-merge"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := hooks.Install(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"post-commit: updated", "post-merge: updated", "post-checkout: unchanged", "post-rewrite: unchanged"}
	if diff := cmp.Diff(want, changes(got)); diff != "" {
		t.Errorf("Install over an older install (-want +got):\n%s", diff)
	}
	st := snapshotDir(t, dir)
	if st["post-commit"].Content != string(hooks.Script("post-commit", false)) || st["post-merge"].Mode != 0o755 {
		t.Errorf("outdated hooks not rewritten: %+v", st["post-merge"])
	}
	if strings.Contains(st["post-commit"].Content, "/home/me") {
		t.Error("the updated hook still names the old absolute path")
	}
	// The chained hook is still the user's, not our old script.
	if c := st["post-commit"+hooks.ChainedSuffix].Content; c != "#!/bin/sh\necho mine\n" {
		t.Errorf("chained hook after reinstall = %q", c)
	}
	if _, ok := st["post-commit"+hooks.ChainedSuffix+hooks.ChainedSuffix]; ok {
		t.Error("a chained hook was chained a second time")
	}
	// Uninstall still knows the old script as ours.
	if !hooks.IsOurs([]byte(oldScript)) {
		t.Error("an older version's hook is not recognised as ours")
	}
}

// The scripts are the same bytes wherever and by whichever binary they
// are installed, and name no path of the machine: a tracked core.hooksPath
// holds them unchanged across clones.
func TestScriptHoldsNoMachinePath(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	a, b := t.TempDir(), filepath.Join(t.TempDir(), "other place")
	for _, d := range []string{a, b} {
		if _, err := hooks.Install(d, false); err != nil {
			t.Fatal(err)
		}
	}
	home, _ := os.UserHomeDir()
	for _, name := range hooks.Names {
		sa, sb := snapshotDir(t, a)[name], snapshotDir(t, b)[name]
		if sa != sb {
			t.Errorf("%s differs between two hooks dirs:\n%s\n---\n%s", name, sa.Content, sb.Content)
		}
		for _, p := range []string{exe, filepath.Dir(exe), a, b, home, os.TempDir()} {
			if p != "" && p != "/" && strings.Contains(sa.Content, p) {
				t.Errorf("%s names a path of this machine, %s:\n%s", name, p, sa.Content)
			}
		}
	}
}

func TestInstallForeignHookOverOurs(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "post-commit"), "#!/bin/sh\necho original\n", 0o755)
	if _, err := hooks.Install(dir, false); err != nil {
		t.Fatal(err)
	}
	// Another tool replaces our post-commit while the original is chained.
	writeFile(t, filepath.Join(dir, "post-commit"), "#!/bin/sh\necho intruder\n", 0o755)
	before := snapshotDir(t, dir)
	_, err := hooks.Install(dir, false)
	if !errors.Is(err, hooks.ErrForeignHook) {
		t.Fatalf("Install over a foreign hook with a chained one kept: err = %v, want ErrForeignHook", err)
	}
	if !strings.Contains(err.Error(), "--force") {
		t.Errorf("error does not say what to do: %v", err)
	}
	if diff := cmp.Diff(before, snapshotDir(t, dir)); diff != "" {
		t.Errorf("a refused install changed the dir (-before +after):\n%s", diff)
	}

	// Uninstall leaves both alone: neither is ours to remove.
	got, err := hooks.Uninstall(dir)
	if err != nil {
		t.Fatal(err)
	}
	if changes(got)[0] != "post-commit: kept" {
		t.Errorf("Uninstall changes = %v, want post-commit kept first", changes(got))
	}
	st := snapshotDir(t, dir)
	if st["post-commit"].Content != "#!/bin/sh\necho intruder\n" || st["post-commit"+hooks.ChainedSuffix].Content != "#!/bin/sh\necho original\n" {
		t.Errorf("uninstall touched a foreign hook or the chained one: %+v", st)
	}

	// --force replaces the intruder and keeps the chained original.
	got, err = hooks.Install(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if changes(got)[0] != "post-commit: chained" {
		t.Errorf("Install --force changes = %v", changes(got))
	}
	st = snapshotDir(t, dir)
	if !hooks.IsOurs([]byte(st["post-commit"].Content)) || st["post-commit"+hooks.ChainedSuffix].Content != "#!/bin/sh\necho original\n" {
		t.Errorf("after install --force: %+v", st)
	}
}

func TestDirHonoursHooksPathAndWorktrees(t *testing.T) {
	ctx := context.Background()
	repo := gittest.New(t)
	got, err := hooks.Dir(ctx, repo.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(repo.Dir, ".git", "hooks"); got != want {
		t.Errorf("Dir = %s, want %s", got, want)
	}
	// A linked worktree shares the main repository's hooks.
	wt := repo.Worktree("a", "feat/a")
	if got, err := hooks.Dir(ctx, wt); err != nil || got != filepath.Join(repo.Dir, ".git", "hooks") {
		t.Errorf("Dir(linked worktree) = %s, %v; want the common hooks dir", got, err)
	}
	custom := filepath.Join(t.TempDir(), "my hooks")
	repo.Git(repo.Dir, "config", "core.hooksPath", custom)
	for _, d := range []string{repo.Dir, wt} {
		if got, err := hooks.Dir(ctx, d); err != nil || got != custom {
			t.Errorf("Dir(%s) with core.hooksPath = %s, %v; want %s", d, got, err, custom)
		}
	}
	repo.Git(repo.Dir, "config", "core.hooksPath", "rel-hooks")
	if got, err := hooks.Dir(ctx, repo.Dir); err != nil || got != filepath.Join(repo.Dir, "rel-hooks") {
		t.Errorf("Dir with a relative core.hooksPath = %s, %v", got, err)
	}
}

// scriptEnv runs installed hook scripts with sh, as git would.
type scriptEnv struct {
	t      *testing.T
	dir    string // hooks dir
	exe    string // where the fake orch-hooks binary goes
	record string // the fake binary writes its arguments and stdin here
}

// onPath is the PATH under which hooks find the fake orch-hooks first.
func (s *scriptEnv) onPath() string {
	return "PATH=" + filepath.Dir(s.exe) + string(filepath.ListSeparator) + os.Getenv("PATH")
}

// newScriptEnv makes a hooks dir and a fake orch-hooks at a path with a
// space, a single quote and a dollar sign, which records how it was run.
func newScriptEnv(t *testing.T) *scriptEnv {
	base := t.TempDir()
	s := &scriptEnv{t: t, dir: filepath.Join(base, "hooks"), record: filepath.Join(base, "record")}
	bindir := filepath.Join(base, "bin dir 'quoted' $HOME `x`")
	for _, d := range []string{s.dir, bindir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.exe = filepath.Join(bindir, "orch-hooks")
	writeFile(t, s.exe, fakeBinary(s.record), 0o755)
	return s
}

// fakeBinary is a shell script standing in for orch-hooks: it appends its
// arguments, one per line, and then what it read on stdin, to record.
func fakeBinary(record string) string {
	return "#!/bin/sh\n{ echo \"called from $0\"; for a in \"$@\"; do echo \"arg: $a\"; done; echo \"stdin: $(cat)\"; } >> '" + record + "'\n"
}

func (s *scriptEnv) run(hook string, stdin string, env []string, args ...string) (stderr string, code int) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.dir, hook), args...)
	cmd.Dir = s.dir
	// The fake binary is on PATH unless env says otherwise (the last
	// value of a variable wins).
	cmd.Env = append(append(os.Environ(), s.onPath()), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		s.t.Fatal(err)
	}
	if out.Len() > 0 {
		s.t.Errorf("hook %s wrote to stdout: %q", hook, out.String())
	}
	return errb.String(), code
}

func (s *scriptEnv) recorded() string {
	b, err := os.ReadFile(s.record)
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}

func TestScriptChainsAndCallsBinary(t *testing.T) {
	s := newScriptEnv(t)
	chainedRecord := filepath.Join(filepath.Dir(s.dir), "chained")
	// The user's post-rewrite reads its input (git writes the rewritten
	// commits there) and fails with 7: the hook's status must be 7.
	writeFile(t, filepath.Join(s.dir, "post-rewrite"),
		"#!/bin/sh\n{ echo \"args: $*\"; cat; } > '"+chainedRecord+"'\nexit 7\n", 0o755)
	if _, err := hooks.Install(s.dir, false); err != nil {
		t.Fatal(err)
	}
	clean := []string{"ORCH_HOOKS="}

	stderr, code := s.run("post-rewrite", "old1 new1\nold2 new2\n", clean, "amend", "arg with space")
	if code != 7 || stderr != "" {
		t.Errorf("post-rewrite: exit %d, stderr %q; want 7 (the chained hook's status) and nothing", code, stderr)
	}
	chained, err := os.ReadFile(chainedRecord)
	if err != nil {
		t.Fatal(err)
	}
	if want := "args: amend arg with space\nold1 new1\nold2 new2\n"; string(chained) != want {
		t.Errorf("chained hook saw %q, want %q", chained, want)
	}
	want := "called from " + s.exe + "\narg: hook\narg: post-rewrite\narg: amend\narg: arg with space\nstdin: \n"
	if got := s.recorded(); got != want {
		t.Errorf("orch-hooks was run as:\n%s\nwant:\n%s", got, want)
	}

	// No chained hook: status 0 whatever the binary does.
	os.Remove(s.record)
	if stderr, code := s.run("post-commit", "", clean); code != 0 || stderr != "" {
		t.Errorf("post-commit: exit %d, stderr %q", code, stderr)
	}
	if got := s.recorded(); got != "called from "+s.exe+"\narg: hook\narg: post-commit\nstdin: \n" {
		t.Errorf("post-commit ran orch-hooks as %q", got)
	}

	// A chained file that is not executable is not run (git would not run
	// it either); the hook still succeeds.
	if err := os.Chmod(filepath.Join(s.dir, "post-rewrite"+hooks.ChainedSuffix), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(chainedRecord)
	if _, code := s.run("post-rewrite", "", clean); code != 0 {
		t.Errorf("post-rewrite with a non-executable chained hook: exit %d", code)
	}
	if _, err := os.Stat(chainedRecord); err == nil {
		t.Error("a non-executable chained hook was run")
	}
}

func TestScriptDisabledByEnv(t *testing.T) {
	s := newScriptEnv(t)
	writeFile(t, filepath.Join(s.dir, "post-merge"), "#!/bin/sh\nexit 3\n", 0o755)
	if _, err := hooks.Install(s.dir, false); err != nil {
		t.Fatal(err)
	}
	stderr, code := s.run("post-merge", "", []string{"ORCH_HOOKS=0"}, "0")
	if code != 3 || stderr != "" {
		t.Errorf("ORCH_HOOKS=0: exit %d, stderr %q; want the chained hook's 3 and nothing", code, stderr)
	}
	if got := s.recorded(); got != "" {
		t.Errorf("ORCH_HOOKS=0, yet orch-hooks was run: %q", got)
	}
	for _, v := range []string{"", "1", "yes"} {
		os.Remove(s.record)
		if _, code := s.run("post-merge", "", []string{"ORCH_HOOKS=" + v}, "0"); code != 3 {
			t.Errorf("ORCH_HOOKS=%q: exit %d", v, code)
		}
		if s.recorded() == "" {
			t.Errorf("ORCH_HOOKS=%q: orch-hooks was not run", v)
		}
	}
}

// noOrchPath is a PATH directory with sh and cat but no orch-hooks.
func noOrchPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, tool := range []string{"sh", "cat"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestScriptBinaryNotOnPath(t *testing.T) {
	s := newScriptEnv(t)
	if _, err := hooks.Install(s.dir, false); err != nil {
		t.Fatal(err)
	}
	noOrch := noOrchPath(t)
	stderr, code := s.run("post-checkout", "", []string{"PATH=" + noOrch, "ORCH_HOOKS=", "ORCH_HOOKS_BIN="}, "a", "b", "1")
	want := "orch-hooks: post-checkout hook skipped: orch-hooks is not on PATH (put its directory on PATH, or set ORCH_HOOKS_BIN to its path; ORCH_HOOKS=0 turns the hooks off)\n"
	if code != 0 || stderr != want {
		t.Errorf("not on PATH: exit %d, stderr %q; want 0 and %q", code, stderr, want)
	}
	if got := s.recorded(); got != "" {
		t.Errorf("orch-hooks ran: %q", got)
	}

	// ORCH_HOOKS_BIN names it (a path with a space, quotes and a $): run.
	stderr, code = s.run("post-checkout", "", []string{"PATH=" + noOrch, "ORCH_HOOKS=", "ORCH_HOOKS_BIN=" + s.exe}, "a", "b", "1")
	if code != 0 || stderr != "" {
		t.Errorf("ORCH_HOOKS_BIN set: exit %d, stderr %q", code, stderr)
	}
	if got, want := s.recorded(), "called from "+s.exe+"\narg: hook\narg: post-checkout\narg: a\narg: b\narg: 1\nstdin: \n"; got != want {
		t.Errorf("ORCH_HOOKS_BIN: orch-hooks was run as:\n%s\nwant:\n%s", got, want)
	}

	// ORCH_HOOKS_BIN naming nothing runnable (a file without x, a missing
	// path, a name not on PATH) is said, in one line, and not run; orch-hooks
	// on PATH is not run in its place.
	plain := filepath.Join(t.TempDir(), "orch-hooks")
	writeFile(t, plain, "#!/bin/sh\necho ran > '"+s.record+"'\n", 0o644)
	for _, bad := range []string{plain, "/nonexistent/orch-hooks", "orch-hooks-nowhere"} {
		os.Remove(s.record)
		stderr, code = s.run("post-checkout", "", []string{"ORCH_HOOKS=", "ORCH_HOOKS_BIN=" + bad}, "a", "b", "1")
		want := "orch-hooks: post-checkout hook skipped: ORCH_HOOKS_BIN=" + bad + " names no executable (set it to the path of orch-hooks, or unset it to use orch-hooks on PATH)\n"
		if code != 0 || stderr != want {
			t.Errorf("ORCH_HOOKS_BIN=%s: exit %d, stderr %q; want 0 and %q", bad, code, stderr, want)
		}
		if got := s.recorded(); got != "" {
			t.Errorf("ORCH_HOOKS_BIN=%s: something ran: %q", bad, got)
		}
	}

	// A chained hook still runs first and its status is still the hook's.
	chainedRecord := filepath.Join(filepath.Dir(s.dir), "chained")
	writeFile(t, filepath.Join(s.dir, "post-checkout"+hooks.ChainedSuffix), "#!/bin/sh\necho ran > '"+chainedRecord+"'\nexit 5\n", 0o755)
	stderr, code = s.run("post-checkout", "", []string{"PATH=" + noOrch, "ORCH_HOOKS=", "ORCH_HOOKS_BIN="}, "a", "b", "1")
	if code != 5 || stderr != want {
		t.Errorf("not on PATH, chained hook: exit %d, stderr %q; want 5 and %q", code, stderr, want)
	}
	if _, err := os.Stat(chainedRecord); err != nil {
		t.Errorf("chained hook not run: %v", err)
	}
}

func TestDisabled(t *testing.T) {
	for v, want := range map[string]bool{"0": true, "1": false, "": false, "false": false} {
		t.Setenv("ORCH_HOOKS", v)
		if got := hooks.Disabled(); got != want {
			t.Errorf("ORCH_HOOKS=%q: Disabled() = %v, want %v", v, got, want)
		}
	}
}

// --- Run: what an installed hook does ---

const runToml = `target = "main"

[reaper]
dead_ticks = 1
interval_s = 0

[hooks]
# Generous, so that a loaded test machine does not make a pass run out of
# budget; the budget tests set their own.
budget_ms = 20000

[[stages]]
name = "build"
run = "true"

[[stages]]
name = "check"
run = "true"
gates = ["cmd:true"]
`

func newEnv(t *testing.T, orchToml string) (*gittest.Repo, *pipeline.Env) {
	t.Helper()
	return pipelinetest.New(t, orchToml)
}

// deadIdentity is a process identity this machine judges dead: this
// process's pid with another start time (a pid since reused).
func deadIdentity(t *testing.T) procid.Identity {
	t.Helper()
	self, err := procid.Self()
	if err != nil {
		t.Fatal(err)
	}
	self.StartTime++
	return self
}

// zombieJob enqueues a job and claims it running for a monitor and command
// that are dead: what a SIGKILLed monitor leaves behind. With exitCode, the
// exit code is recorded too (a monitor killed while finalizing).
func zombieJob(t *testing.T, env *pipeline.Env, branch, stage string, exitCode *int) string {
	t.Helper()
	j, _, err := env.Enqueue(pipeline.Request{Branch: branch, Stage: stage})
	if err != nil {
		t.Fatal(err)
	}
	dead := deadIdentity(t)
	_, won, err := env.Store.Claim(context.Background(), j.ID, []gitstate.Status{gitstate.Queued}, gitstate.Running, "started by monitor", func(j *gitstate.Job) {
		j.Monitor, j.Command, j.PGID = dead, dead, dead.PID
		if exitCode != nil {
			j.ExitCode, j.FinishedAt = exitCode, time.Now().UTC()
		}
	})
	if err != nil || !won {
		t.Fatalf("claim %s: won %v, %v", j.ID, won, err)
	}
	return j.ID
}

func status(t *testing.T, env *pipeline.Env, id string) *gitstate.Job {
	t.Helper()
	j, err := env.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestRunReapsZombieAndSaysSo(t *testing.T) {
	_, env := newEnv(t, runToml)
	id := zombieJob(t, env, "feat/a", "build", nil)

	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	if want := "orch-hooks: " + id + ": dead: failed (lost)\n"; out.String() != want {
		t.Errorf("hook output = %q, want %q", out.String(), want)
	}
	j := status(t, env, id)
	if j.Status != gitstate.Failed || j.Reason != "lost" || j.EndedBy != gitstate.EndedByReaperDead {
		t.Errorf("after the hook: status %s, reason %q, ended_by %q; want failed, lost, reaper:dead", j.Status, j.Reason, j.EndedBy)
	}
	if a := j.History[len(j.History)-1].Actor; a != "hook" {
		t.Errorf("the reap is recorded with actor %q, want hook", a)
	}

	// Nothing left to do: silent.
	out.Reset()
	hooks.Run(context.Background(), env, "", &out)
	if out.Len() != 0 {
		t.Errorf("a hook with nothing to do printed %q", out.String())
	}
	// With an interval, a pass (or the slow path finding a recent one)
	// tells the next hooks it is not due again for that long.
	if hooks.NotDue(env.Store.Dir(), env.Config.Path, time.Now()) {
		t.Error("NotDue true with reaper.interval_s = 0")
	}
	env.Config.Reaper.IntervalS = 60
	hooks.Run(context.Background(), env, "", &out)
	if !hooks.NotDue(env.Store.Dir(), env.Config.Path, time.Now()) {
		t.Error("after a pass, NotDue is false: the next hook would decode the config again")
	}
}

func TestRunSilentOnObservation(t *testing.T) {
	_, env := newEnv(t, runToml)
	env.Config.Reaper.DeadTicks = 3
	id := zombieJob(t, env, "feat/a", "build", nil)
	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	if out.Len() != 0 {
		t.Errorf("a pass that only counted an observation printed %q", out.String())
	}
	if j := status(t, env, id); j.Status != gitstate.Running {
		t.Errorf("job is %s after one observation of three", j.Status)
	}
}

func TestRunSkipsWhenAnotherPassRuns(t *testing.T) {
	_, env := newEnv(t, runToml)
	id := zombieJob(t, env, "feat/a", "build", nil)
	unlock, err := statefile.TryLock(env.Store.LockPath(hooks.PassLock))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a hook waited %s for another pass; it must skip at once", d)
	}
	if out.Len() != 0 {
		t.Errorf("a skipped hook printed %q", out.String())
	}
	if j := status(t, env, id); j.Status != gitstate.Running {
		t.Errorf("a skipped hook ended the job: %s", j.Status)
	}
	unlock()
	hooks.Run(context.Background(), env, "", &out)
	if j := status(t, env, id); j.Status != gitstate.Failed {
		t.Errorf("once the other pass is done the hook reaps: status %s", j.Status)
	}
}

func TestRunStaysWithinBudget(t *testing.T) {
	_, env := newEnv(t, runToml)
	env.Config.Hooks.BudgetMS = 200
	id := zombieJob(t, env, "feat/a", "build", nil)
	// The job's lock is held (a slow writer): the claim would wait up to
	// the store's lock timeout, but a hook must give up within its budget.
	unlock, err := statefile.Lock(context.Background(), env.Store.LockPath("job-"+id))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	start := time.Now()
	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hook pass took %s with a 200ms budget", d)
	}
	if strings.Contains(out.String(), "failed") {
		t.Errorf("hook claims to have ended a job it could not lock: %q", out.String())
	}
	if j := status(t, env, id); j.Status != gitstate.Running {
		t.Errorf("job is %s", j.Status)
	}
}

func TestRunDefersSlowFinalizeToBackground(t *testing.T) {
	_, env := newEnv(t, runToml)
	zero := 0
	id := zombieJob(t, env, "feat/a", "check", &zero)

	// The background reaper is a stand-in that records how it was started.
	base := t.TempDir()
	record := filepath.Join(base, "record")
	exe := filepath.Join(base, "orch-hooks")
	writeFile(t, exe, "#!/bin/sh\n{ pwd; echo \"$@\"; } > '"+record+".tmp' && mv '"+record+".tmp' '"+record+"'\n", 0o755)

	var out bytes.Buffer
	hooks.Run(context.Background(), env, exe, &out)
	if want := "orch-hooks: 1 job(s) need a longer reaper pass: started orch-hooks reap in the background\n"; out.String() != want {
		t.Errorf("hook output = %q, want %q", out.String(), want)
	}
	// A cmd: gate is never run inside the hook.
	if j := status(t, env, id); j.Status != gitstate.Running {
		t.Errorf("job is %s: the hook finalized it itself", j.Status)
	}
	var got []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if got, err = os.ReadFile(record); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(lines) != 2 || lines[0] != env.Store.Dir() || !strings.HasSuffix(lines[1], "reap") ||
		!strings.Contains(lines[1], "--config "+env.Config.Path) {
		t.Errorf("background pass started as %q; want `--config %s reap` in %s", got, env.Config.Path, env.Store.Dir())
	}
	if _, err := os.Stat(env.Store.LogPath("reaper")); err != nil {
		t.Errorf("background pass has no log: %v", err)
	}
}

func TestRunReclaimsStaleLease(t *testing.T) {
	_, env := newEnv(t, runToml)
	m := lease.Open(env.Store.Dir())
	if _, err := m.TryAcquire(context.Background(), "main", lease.Request{Holder: "gone", Owner: deadIdentity(t), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	if want := "orch-hooks: lease main: lease: reclaimed\n"; out.String() != want {
		t.Errorf("hook output = %q, want %q", out.String(), want)
	}
	if l, err := m.Get("main"); err != nil || l != nil {
		t.Errorf("lease after the hook: %+v, %v", l, err)
	}
}

func TestRunReportsEveryAction(t *testing.T) {
	_, env := newEnv(t, runToml)
	a := zombieJob(t, env, "feat/a", "build", nil)
	b := zombieJob(t, env, "feat/b", "build", nil)
	var out bytes.Buffer
	hooks.Run(context.Background(), env, "", &out)
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	sort.Strings(got)
	want := []string{"orch-hooks: " + a + ": dead: failed (lost)", "orch-hooks: " + b + ": dead: failed (lost)"}
	sort.Strings(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("one line per action (-want +got):\n%s", diff)
	}
}
