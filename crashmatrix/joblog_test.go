package crashmatrix_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/orch-hooks/orch-hooks/procid"
)

// TestJobLogCap (issue 13 item 6): a command that prints three times the
// configured cap leaves a log that takes at most the cap (and a few
// blocks) of disk, and `orch-hooks logs` prints the head of the output, a
// line naming exactly how many bytes were cut, and the tail.
func TestJobLogCap(t *testing.T) {
	t.Parallel()
	const capBytes = 64 << 10
	const head, tail = "HEAD-OF-THE-OUTPUT\n", "\nTAIL-OF-THE-OUTPUT\n"
	total := 3 * capBytes
	filler := total - len(head) - len(tail)
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent.sh")
	script := fmt.Sprintf("printf 'HEAD-OF-THE-OUTPUT\\n'\nhead -c %d /dev/zero | tr '\\0' x\nprintf '\\nTAIL-OF-THE-OUTPUT\\n'\n", filler)
	if err := os.WriteFile(agent, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	repo, env := newWorld(t, fmt.Sprintf(`target = "main"

[logs]
max_bytes = %d

[[stages]]
name = "build"
run = "sh '%s'"
`, capBytes, agent))
	r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/loud")
	wantCode(t, "enqueue", r, 0, "")
	id := strings.TrimSpace(r.stdout)
	wantCode(t, "run", runCLI(t, repo, "run", id), 0, "")
	var st syscall.Stat_t
	if err := syscall.Stat(env.Store.LogPath(id), &st); err != nil {
		t.Fatal(err)
	}
	// The monitor's own lines (start, end, outcome) are well under a block.
	if used := st.Blocks * 512; used > capBytes+4*int64(st.Blksize) {
		t.Errorf("the log takes %d bytes of disk (apparent size %d) for a cap of %d", used, st.Size, capBytes)
	}
	if st.Size < int64(total) {
		t.Errorf("apparent size %d: less than the %d bytes of output", st.Size, total)
	}
	r = runCLI(t, repo, "logs", id)
	wantCode(t, "logs", r, 0, "")
	log := r.stdout
	if !strings.Contains(log, head) {
		t.Errorf("the head of the output is missing from logs:\n%.300s", log)
	}
	if !strings.Contains(log, tail) {
		t.Errorf("the tail of the output is missing from logs:\n…%s", tailOf(log, 600))
	}
	m := regexp.MustCompile(`… (\d+) bytes cut \(log capped at 65536 bytes\) …`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("logs does not name the cut:\n%.300s\n…\n%s", log, tailOf(log, 600))
	}
	// Head, then the cut, then the tail: in that order.
	if h, c, tl := strings.Index(log, head), strings.Index(log, "bytes cut"), strings.LastIndex(log, tail); !(h >= 0 && h < c && c < tl) {
		t.Errorf("head at %d, cut marker at %d, tail at %d: not in order", h, c, tl)
	}
	// What is printed plus what the line says was cut is the whole file.
	cut, _ := strconv.Atoi(m[1])
	if got := int64(len(log) - len(m[0]) - 2 + cut); got != st.Size {
		t.Errorf("logs printed %d bytes and says %d were cut: %d, the file's size is %d", len(log)-len(m[0])-2, cut, got, st.Size)
	}
	if n := len(strings.Join(regexp.MustCompile(`x{16,}`).FindAllString(log, -1), "")); n < capBytes-4096-len(head)-len(tail) || n > capBytes {
		t.Errorf("logs keeps %d bytes of the middle of the output, want about %d (the cap less head and tail)", n, capBytes-len(head)-len(tail))
	}
}

// fullLogScript runs in a private mount namespace (unshare -rm) with the
// state dir, and so the job's log, on a 512 KiB tmpfs that only this
// namespace sees. It leaves 256 KiB free and runs a job whose command
// prints far more than that (the cap, 16 MiB, is no help here), lets the
// command exit 0 once it has, and waits for the monitor to end the job.
// Nothing frees space but the monitor; a watchdog frees it after a minute
// (and says so in $OUT/freed_by_script) so that a failure is reported,
// not hung. It copies what the test judges to $OUT.
const fullLogScript = `
set -u
waitfor() { i=0; while ! eval "$1"; do i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.05; done; }
mount -t tmpfs -o size=512k,mode=0755 tmpfs "$STATE" || exit 90
"$ORCH" init >"$OUT/init.out" 2>&1 || exit 91
"$ORCH" enqueue --stage flood --branch feat/flood >"$OUT/id" 2>"$OUT/enq.err" || exit 92
id=$(cat "$OUT/id")
dd if=/dev/zero of="$STATE/filler" bs=4096 2>/dev/null
size=$(stat -c %s "$STATE/filler")
truncate -s $((size - 262144)) "$STATE/filler"
"$ORCH" run "$id" >"$OUT/run.out" 2>"$OUT/run.err" &
pid=$!
waitfor '[ -e "$OUT/printed" ]' || exit 93
: > "$OUT/exit"
( sleep 60; rm -f "$STATE/filler"; : > "$OUT/freed_by_script" ) >/dev/null 2>&1 &
watchdog=$!
wait $pid
echo $? >"$OUT/run.rc"
kill $watchdog
"$ORCH" show "$id" --json >"$OUT/show.json" 2>"$OUT/show.err"
"$ORCH" logs "$id" >"$OUT/logs.out" 2>"$OUT/logs.err"
`

// fullLogAgent is the job's command: it commits its work, prints 2 MiB
// (the file system holding the log has 256 KiB free), says so, and exits 0
// when the script lets it.
const fullLogAgent = `git commit -q --allow-empty -m "the flood's work"
printf 'FLOOD-START\n'
head -c 2097152 /dev/zero | tr '\0' y
printf '\nFLOOD-END\n'
: > "%[1]s/printed"
while [ ! -e "%[1]s/exit" ]; do sleep 0.02; done
exit 0
`

// TestJobLogFullDisk (issue 13 item 6): an agent prints until the file
// system that holds the state dir is full, then exits 0. The monitor, which
// cannot record the exit code while the disk is full, says so (naming the
// problem and the fix), punches the log down to its first 64 KiB — the
// records come first — and retries: the job ends done (not failed, not
// lost) without anyone else freeing space, and its log says what was cut.
func TestJobLogFullDisk(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare(1) is not installed: cannot mount a private tmpfs to fill up")
	}
	probe := t.TempDir()
	if out, err := exec.Command("unshare", "-rm", "sh", "-c", `mount -t tmpfs -o size=64k tmpfs "$1"`, "sh", probe).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs in a private mount namespace here (unshare -rm ... mount -t tmpfs: %v: %s): needs root or unprivileged user namespaces", err, bytes.TrimSpace(out))
	}
	out := t.TempDir()
	agent := filepath.Join(t.TempDir(), "flood.sh")
	if err := os.WriteFile(agent, []byte(fmt.Sprintf(fullLogAgent, out)), 0o755); err != nil {
		t.Fatal(err)
	}
	repo, _ := newWorld(t, `target = "main"

[[stages]]
name = "flood"
run = "sh '`+agent+`'"
gates = ["commits_ahead"]
`)
	state := filepath.Join(repo.Dir, ".git", "orch")
	cmd := exec.Command("unshare", "-rm", "sh", "-c", fullLogScript)
	cmd.Dir = repo.Dir
	cmd.Env = append(repo.Env(), "ORCH="+cliBinary(t), "STATE="+state, "OUT="+out)
	b, err := cmd.CombinedOutput()
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(out, name))
		return string(b)
	}
	if err != nil {
		if cmd.ProcessState.ExitCode() == 90 {
			t.Skipf("mount of the tmpfs on %s failed: %s", state, b)
		}
		t.Fatalf("script: %v\n%s\nrun stderr:\n%s", err, b, read("run.err"))
	}
	runErr := read("run.err")
	log := read("logs.out")
	t.Logf("the monitor while the disk was full:\n%s\nthe end of the log:\n%s", runErr, tailOf(log, 700))
	if _, err := os.Stat(filepath.Join(out, "freed_by_script")); err == nil {
		t.Errorf("the job ended only once the test freed space: the monitor did not give up its log's space for the records")
	}
	if rc := strings.TrimSpace(read("run.rc")); rc != "0" {
		t.Errorf("run exited %s, want 0 (the job's command exited 0 and committed its work)\nstderr:\n%s", rc, runErr)
	}
	for _, want := range []string{"no space left on", "free space", "retries", "freed"} {
		if !strings.Contains(runErr, want) {
			t.Errorf("the monitor's stderr does not say %q while the disk is full:\n%s", want, runErr)
		}
	}
	var j struct {
		Status   string `json:"status"`
		Reason   string `json:"reason"`
		EndedBy  string `json:"ended_by"`
		ExitCode *int   `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(read("show.json")), &j); err != nil {
		t.Fatalf("show --json: %v\n%s%s", err, read("show.json"), read("show.err"))
	}
	if j.Status != "done" || j.ExitCode == nil || *j.ExitCode != 0 || j.EndedBy != "monitor" || strings.Contains(j.Reason, "lost") {
		t.Errorf("job ended %s (%s) by %s, exit code %v; want done by its monitor with exit code 0", j.Status, j.Reason, j.EndedBy, j.ExitCode)
	}
	if !strings.Contains(log, "FLOOD-START") || !strings.Contains(log, "bytes cut (log capped at") || !strings.Contains(log, "no space left on") {
		t.Errorf("logs does not keep the head of the output and say what was cut and why:\n…%s%s", tailOf(log, 800), read("logs.err"))
	}
	if out, err := exec.Command("git", "-C", repo.Dir, "log", "-1", "--format=%s", "feat/flood").Output(); err != nil || !strings.Contains(string(out), "flood's work") {
		t.Errorf("the job's work is not on its branch: %q %v", out, err)
	}
}

// tailOf is the last n bytes of s.
func tailOf(s string, n int) string { return s[max(0, len(s)-n):] }

// survivorAgent writes, says it has started, waits for the test, and
// writes again: "wrote" exists only if that second write succeeded (a
// pipe without its reader kills sh with SIGPIPE before it).
const survivorAgent = `printf 'BEFORE-THE-KILL\n'
: > "%[1]s/started"
while [ ! -e "%[1]s/go" ]; do sleep 0.02; done
printf 'AFTER-THE-MONITOR-DIED\n' && : > "%[1]s/wrote"
: > "%[1]s/done"
`

// TestJobOutputSurvivesMonitorKill (issue 13 item 6, DESIGN.md "The
// outcome survives the monitor"): the log's cap keeps the monitor out of
// the command's data path, so a monitor killed with SIGKILL costs the
// command nothing — it goes on writing its log. The monitor is the process
// the test started; the command is found through the job's record (its
// pid and start time), never by name.
func TestJobOutputSurvivesMonitorKill(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	agent := filepath.Join(t.TempDir(), "survivor.sh")
	if err := os.WriteFile(agent, []byte(fmt.Sprintf(survivorAgent, out)), 0o755); err != nil {
		t.Fatal(err)
	}
	repo, env := newWorld(t, `target = "main"

[logs]
max_bytes = 65536

[[stages]]
name = "build"
run = "sh '`+agent+`'"
`)
	r := runCLI(t, repo, "enqueue", "--stage", "build", "--branch", "feat/survivor")
	wantCode(t, "enqueue", r, 0, "")
	id := strings.TrimSpace(r.stdout)
	mon := exec.Command(cliBinary(t), "run", id)
	mon.Dir, mon.Env = repo.Dir, repo.Env()
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	monitorGone := false
	t.Cleanup(func() {
		if !monitorGone {
			mon.Process.Kill()
			mon.Wait()
		}
	})
	var command procid.Identity
	waitUntil(t, "the command to start and its monitor to stamp it", func() bool {
		if _, err := os.Stat(filepath.Join(out, "started")); err != nil {
			return false
		}
		j, err := env.Store.Get(id)
		if err != nil || j.Command.IsZero() {
			return false
		}
		command = j.Command
		return true
	})
	// Whatever the outcome, the command (checked by identity) ends with
	// the test.
	t.Cleanup(func() { procid.SignalGroup(command, syscall.SIGKILL) })
	if err := mon.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	mon.Wait()
	monitorGone = true
	if l, err := procid.Check(command); l != procid.Alive {
		t.Fatalf("the command %v is %v (%v) once its monitor was killed, before it wrote again", command, l, err)
	}
	if err := os.WriteFile(filepath.Join(out, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Until the command says it is done, or is gone without saying so.
	waitUntil(t, "the command to write and end", func() bool {
		if _, err := os.Stat(filepath.Join(out, "done")); err == nil {
			return true
		}
		l, _ := procid.Check(command)
		return l != procid.Alive
	})
	if _, err := os.Stat(filepath.Join(out, "wrote")); err != nil {
		t.Errorf("the command could not write once its monitor was killed (SIGPIPE/EPIPE on its output?): %v", err)
	}
	b, err := os.ReadFile(env.Store.LogPath(id))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "BEFORE-THE-KILL") || !strings.Contains(string(b), "AFTER-THE-MONITOR-DIED") {
		t.Errorf("the log does not hold what the command wrote before and after its monitor was killed:\n%s", tailOf(string(b), 600))
	}
}
