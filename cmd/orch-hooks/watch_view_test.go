package main

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/gittest"
	"github.com/orch-hooks/orch-hooks/lease"
	"github.com/orch-hooks/orch-hooks/procid"
	"github.com/orch-hooks/orch-hooks/reaper"
)

var update = flag.Bool("update", false, "rewrite the golden files of the watch view")

// sgr matches the ANSI style sequences render emits.
var sgr = regexp.MustCompile("\x1b\\[[0-9;]*m")

// visible is the number of runes of s a terminal shows.
func visible(s string) int { return utf8.RuneCountInString(sgr.ReplaceAllString(s, "")) }

// styledAtEnd reports whether a style is still on at the end of s.
func styledAtEnd(s string) bool {
	on := false
	for _, m := range sgr.FindAllString(s, -1) {
		on = m != "\x1b[0m"
	}
	return on
}

// inUTC renders times in UTC (render shows local times) for the test.
func inUTC(t *testing.T) {
	saved := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = saved })
}

var now = time.Date(2025, 3, 14, 17, 32, 27, 0, time.UTC)

// elsewhere is a process on another host: its liveness cannot be judged
// here, so a lease it holds is stale only by its TTL.
func elsewhere(pid int) procid.Identity {
	return procid.Identity{Host: "build-host-2", BootID: "0a1b2c", PID: pid, StartTime: 12345}
}

func gate(name string, passed bool, detail string) gitstate.GateResult {
	return gitstate.GateResult{Name: name, Passed: passed, Detail: detail, At: now}
}

// fixedFrame has a job in every status (with gates passed and failed, a
// multi-line reason and non-ASCII names), a lease held and a stale one, a
// pass with an error, an unreadable record, a note and events.
func fixedFrame() frame {
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	return frame{
		Now:      now,
		Repo:     "/home/me/project",
		Interval: 30 * time.Second,
		Dispatch: true,
		Note:     "dispatch: start feat-g.implement.1.0c0ffee0: monitor did not report its claim",
		Jobs: []*gitstate.Job{
			{ID: "feat-c.implement.1.f38eec47", Task: "feat/c", Stage: "implement", Branch: "feat/c", Status: gitstate.Running,
				CreatedAt: ago(3 * time.Minute), StartedAt: ago(2*time.Minute + 5*time.Second), Command: elsewhere(30145), Monitor: elsewhere(30140)},
			{ID: "feat-h.review.1.aa11bb22", Task: "feat/h", Stage: "review", Branch: "feat/h", Status: gitstate.Running,
				CreatedAt: ago(time.Hour), StartedAt: ago(59 * time.Second), Monitor: elsewhere(30150)},
			{ID: "feat-d.implement.1.49695a27", Task: "feat/größe", Stage: "implement", Branch: "feat/größe", Status: gitstate.Queued,
				CreatedAt: ago(3*time.Minute + 30*time.Second)},
			{ID: "feat-b.implement.1.04b44729", Task: "feat/b", Stage: "implement", Branch: "feat/b", Status: gitstate.Done,
				StartedAt: ago(10 * time.Minute), EndedAt: ago(6 * time.Minute), Command: elsewhere(30975),
				Gates:  []gitstate.GateResult{gate("commits_ahead", true, "2 commits ahead"), gate("cmd:go test ./...", true, "")},
				Reason: "exit code 0, every gate passed"},
			{ID: "feat-b.merge.1.8876da4d", Task: "feat/b", Stage: "merge", Branch: "feat/b", Status: gitstate.Done,
				EndedAt: ago(5 * time.Minute), Gates: []gitstate.GateResult{gate("mergeable", true, "")}, Reason: "merged"},
			{ID: "feat-e.implement.2.0badc0de", Task: "feat/e", Stage: "implement", Branch: "feat/e", Status: gitstate.Failed,
				EndedAt: ago(50 * time.Hour), Command: elsewhere(777),
				Gates:  []gitstate.GateResult{gate("commits_ahead", true, ""), gate("cmd:go test ./...", false, "exit status 1"), gate("clean_worktree", false, "1 untracked file")},
				Reason: "gate cmd:go test ./... failed: exit status 1: --- FAIL: TestSomethingRatherLong (0.00s)\n    x_test.go:12: boom"},
			{ID: "feat-f.review.1.cafef00d", Task: "feat/f", Stage: "review", Branch: "feat/f", Status: gitstate.Cancelled,
				EndedAt: ago(90 * time.Minute), Reason: "cancelled by user"},
		},
		Leases: []*lease.Lease{
			{Target: "main", Holder: "alice", Owner: elsewhere(29933), Token: 4, AcquiredAt: ago(3 * time.Second), RenewedAt: ago(3 * time.Second), TTLMS: 900_000},
			{Target: "release/1.0", Holder: "bob", Owner: elsewhere(4242), Token: 7, AcquiredAt: ago(3 * time.Hour), RenewedAt: ago(2 * time.Hour), TTLMS: 900_000},
		},
		Pass: &reaper.Snapshot{At: ago(time.Second), Scanned: 3, Tier1: 1, Tier2: 0, Tier3: 0, Repaired: 1, LeasesReclaimed: 1,
			Errors: []reaper.PassError{{Job: "feat-x.implement.1.12345678", Message: "lock timeout"}}},
		Unreadable: 1,
		Events: []gitstate.Transition{
			{At: ago(6 * time.Minute), Job: "feat-b.implement.1.04b44729", Actor: "monitor", PID: 30970, From: gitstate.Running, To: gitstate.Done, Reason: "exit code 0, every gate passed"},
			{At: ago(6 * time.Minute), Job: "feat-b.merge.1.8876da4d", Actor: "monitor", PID: 30970, To: gitstate.Queued},
			{At: ago(5 * time.Minute), Job: "feat-b.merge.1.8876da4d", Actor: "monitor", PID: 31046, From: gitstate.Running, To: gitstate.Done, Reason: "merged"},
			{At: ago(2*time.Minute + 5*time.Second), Job: "feat-c.implement.1.f38eec47", Actor: "monitor", PID: 30140, From: gitstate.Queued, To: gitstate.Running, Reason: "started by monitor"},
			{At: ago(59 * time.Second), Job: "feat-h.review.1.aa11bb22", Actor: "monitor", PID: 30150, From: gitstate.Queued, To: gitstate.Running, Reason: "started by monitor"},
			{At: ago(2 * time.Second), Job: "feat-z.implement.1.99999999", Actor: "hook", PID: 5, From: gitstate.Running, To: gitstate.Failed, Reason: "lost"},
		},
	}
}

func golden(t *testing.T, name string, got []string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	data := []byte(strings.Join(got, "\n") + "\n")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if diff := cmp.Diff(string(want), string(data)); diff != "" {
		t.Errorf("render differs from %s (-want +got); if the change is intended, run go test -run %s -update:\n%s", path, t.Name(), diff)
	}
}

func checkFits(t *testing.T, lines []string, width, height int) {
	t.Helper()
	if len(lines) > height {
		t.Errorf("%d lines for a height of %d", len(lines), height)
	}
	for i, l := range lines {
		if v := visible(l); v > width {
			t.Errorf("line %d is %d columns wide, more than %d: %q", i+1, v, width, l)
		}
		if styledAtEnd(l) {
			t.Errorf("line %d leaves a style on: %q", i+1, l)
		}
		if strings.ContainsAny(sgr.ReplaceAllString(l, ""), "\x1b\n\r\t") {
			t.Errorf("line %d has a control character: %q", i+1, l)
		}
	}
}

func TestRenderGolden(t *testing.T) {
	inUTC(t)
	lines := render(fixedFrame(), 100, 40, false)
	checkFits(t, lines, 100, 40)
	for _, l := range lines {
		if strings.Contains(l, "\x1b") {
			t.Fatalf("escape code without colour: %q", l)
		}
	}
	golden(t, "watch_frame.golden", lines)
}

func TestRenderGoldenColor(t *testing.T) {
	inUTC(t)
	lines := render(fixedFrame(), 100, 40, true)
	checkFits(t, lines, 100, 40)
	golden(t, "watch_frame_color.golden", lines)
	// Without the escapes it is the plain frame.
	plain := render(fixedFrame(), 100, 40, false)
	for i := range lines {
		lines[i] = sgr.ReplaceAllString(lines[i], "")
	}
	if diff := cmp.Diff(plain, lines); diff != "" {
		t.Errorf("colour changes the text (-plain +stripped):\n%s", diff)
	}
}

// sections splits an unbounded render into the parts that must always be
// shown (header, running, queued, the tail) and those that give way when
// the terminal is short (ended jobs, events), in order.
func sections(t *testing.T, full []string) (keep, ended, events []string) {
	t.Helper()
	find := func(prefix string) int {
		for i, l := range full {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		t.Fatalf("no %q in %q", prefix, full)
		return -1
	}
	e, l, ev := find("ENDED (recent)")-1, find("LEASES (")-1, find("EVENTS")-1
	keep = append(append([]string(nil), full[:e]...), full[l:ev]...)
	return keep, full[e:l], full[ev:]
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func TestRenderShortTerminalKeepsEssentials(t *testing.T) {
	inUTC(t)
	f := fixedFrame()
	full := render(f, 200, 1000, false)
	keep, _, events := sections(t, full)
	for h := 1; h <= len(full)+2; h++ {
		got := render(f, 200, h, false)
		checkFits(t, got, 200, h)
		if h >= len(keep) && !isSubsequence(keep, got) {
			t.Errorf("height %d: header, running, queued or the tail is missing:\n%s", h, strings.Join(got, "\n"))
		}
		if h >= len(full) && !cmp.Equal(got, full) {
			t.Errorf("height %d: with room for everything the frame is cut:\n%s", h, strings.Join(got, "\n"))
		}
		// Events are newest-first kept: any event shown is among the last.
		if i := slicesIndex(got, "EVENTS"); i >= 0 {
			shown := got[i+1:]
			if !isSubsequence(shown, events[len(events)-len(shown):]) {
				t.Errorf("height %d: events shown are not the newest: %q", h, shown)
			}
		}
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// The view's doc: "Sections shrink from the bottom (events, then ended
// jobs)": while any event is shown, no ended job may be cut.
func TestRenderShortTerminalDropsEventsFirst(t *testing.T) {
	inUTC(t)
	f := fixedFrame()
	full := render(f, 200, 1000, false)
	keep, ended, _ := sections(t, full)
	var bad []string
	for h := len(keep); h < len(full); h++ {
		got := render(f, 200, h, false)
		if slicesIndex(got, "EVENTS") >= 0 && !isSubsequence(ended, got) {
			bad = append(bad, fmt.Sprint(h))
		}
	}
	if len(bad) > 0 {
		t.Fatalf("render gives ended jobs at most half of the spare rows: at heights %s events are shown while ended jobs are cut "+
			"(watch_view.go: keepEnded = min(len, max(room/2, ...)); its own comment says events shrink first)", strings.Join(bad, ", "))
	}
}

func TestRenderHeight12(t *testing.T) {
	inUTC(t)
	f := fixedFrame()
	// Room for the essentials in 12 rows: one running job, none queued.
	f.Note, f.Unreadable, f.Leases = "", 0, nil
	f.Jobs = []*gitstate.Job{f.Jobs[0], f.Jobs[3], f.Jobs[4], f.Jobs[5], f.Jobs[6]}
	got := render(f, 100, 12, false)
	checkFits(t, got, 100, 12)
	text := strings.Join(got, "\n")
	for _, want := range []string{"orch-hooks watch  /home/me/project  17:32:27  every 30s, dispatching", "RUNNING (1)",
		"  feat-c.implement.1.f38eec47", "QUEUED (0)", "LEASES (0)", "LAST PASS 1s ago: 3 scanned"} {
		if !strings.Contains(text, want) {
			t.Errorf("height 12: %q missing:\n%s", want, text)
		}
	}
	if strings.Contains(text, "EVENTS") {
		t.Errorf("height 12: events shown though the essentials fill the screen:\n%s", text)
	}
	if !strings.HasPrefix(got[len(got)-1], "LAST PASS") {
		t.Errorf("height 12: the last line is %q, want the last pass", got[len(got)-1])
	}
}

func TestRenderNoPassYetAndWatchingOnly(t *testing.T) {
	inUTC(t)
	f := frame{Now: now, Repo: "/r", Interval: time.Second}
	got := render(f, 80, 40, false)
	want := []string{
		"orch-hooks watch  /r  17:32:27  every 1s, watching only",
		"", "RUNNING (0)", "", "QUEUED (0)", "", "ENDED (recent) (0)",
		"", "LEASES (0)", "", "LAST PASS none yet", "", "EVENTS",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("empty frame (-want +got):\n%s", diff)
	}
}

func TestRenderConfigError(t *testing.T) {
	inUTC(t)
	f := frame{Now: now, Repo: "/r", Interval: time.Second, Dispatch: true,
		ConfigError: "/r/orch.toml:3: max_concurrency: must be at least 1 (got 0)\x1b[2J", ConfigLoadedAt: now.Add(-time.Minute),
		ConfigNote: "not shown while there is an error"}
	got := render(f, 80, 40, false)
	want := []string{
		"orch-hooks watch  /r  17:32:27  every 1s, dispatching",
		`CONFIG ERROR /r/orch.toml:3: max_concurrency: must be at least 1 (got 0)\x1b[2J`,
		"  running on the config loaded at 17:31:27; no jobs are started until the file",
		"  is fixed",
		"", "RUNNING (0)",
	}
	if diff := cmp.Diff(want, got[:len(want)]); diff != "" {
		t.Errorf("frame with a config error (-want +got):\n%s", diff)
	}
	f.ConfigError = ""
	got = render(f, 80, 40, false)
	if got[1] != "not shown while there is an error" {
		t.Errorf("the reload note: got %q", got[1])
	}
}

func TestTruncate(t *testing.T) {
	const b, r, reset = "\x1b[1m", "\x1b[31m", "\x1b[0m"
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"hello world", 5, "hello"},
		{"hello", 5, "hello"},
		{"hello", 10, "hello"},
		{"", 3, ""},
		{"abc", 0, ""},
		{"größe→weiter", 6, "größe→"},
		{"日本語のテキスト", 3, "日本語"},
		{b + "bold text" + reset, 4, b + "bold" + reset},
		{b + "bold" + reset, 4, b + "bold" + reset},
		{b + "ab" + reset + "cdef", 3, b + "ab" + reset + "c"},
		{b + r + "red bold" + reset + " rest", 3, b + r + "red" + reset},
		{"plain " + r + "red" + reset, 8, "plain " + r + "re" + reset},
		{"x" + b + "y", 1, "x" + b + reset}, // a style opened at the cut is closed
	} {
		got := truncate(tc.in, tc.width)
		if got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

// TestTruncateProperties: for any mix of text and styles, the result shows
// exactly min(width, visible) runes, is a prefix of the input up to a
// closing reset, and leaves no style on when it cut.
func TestTruncateProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "bc", "def ", "ü", "→", "日本", "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[0m", " "}
	for i := 0; i < 5000; i++ {
		var sb strings.Builder
		for n := rng.IntN(12); n > 0; n-- {
			sb.WriteString(pieces[rng.IntN(len(pieces))])
		}
		s := sb.String()
		w := rng.IntN(12)
		got := truncate(s, w)
		if v, want := visible(got), min(w, visible(s)); v != want {
			t.Fatalf("truncate(%q, %d) = %q: %d visible runes, want %d", s, w, got, v, want)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("truncate(%q, %d) = %q: invalid UTF-8", s, w, got)
		}
		if visible(s) > w {
			if styledAtEnd(got) {
				t.Fatalf("truncate(%q, %d) = %q leaves a style on", s, w, got)
			}
			if !strings.HasPrefix(s, strings.TrimSuffix(got, "\x1b[0m")) {
				t.Fatalf("truncate(%q, %d) = %q is not a prefix of the input", s, w, got)
			}
		} else if got != s {
			t.Fatalf("truncate(%q, %d) = %q: changed a string that fits", s, w, got)
		}
	}
}

func TestGateSummaryAndEventLine(t *testing.T) {
	if got := gateSummary(nil); got != "-" {
		t.Errorf("no gates: %q", got)
	}
	gs := []gitstate.GateResult{gate("a", true, ""), gate("b", false, ""), gate("c", false, "")}
	if got := gateSummary(gs); got != "1/3 (b failed)" {
		t.Errorf("gateSummary = %q", got)
	}
	e := gitstate.Transition{Job: "j.s.1.00000000", Actor: "cli", PID: 9, To: gitstate.Queued}
	if got := eventLine(e); got != "j.s.1.00000000 new → queued by cli pid 9" {
		t.Errorf("eventLine = %q", got)
	}
	e.From, e.To, e.Reason = gitstate.Running, gitstate.Failed, "line one\nline two"
	// On one line: the newline escaped, not cut (what follows may be the
	// gate's output that says why).
	if got := eventLine(e); got != `j.s.1.00000000 running → failed by cli pid 9: line one\nline two` {
		t.Errorf("eventLine (multi-line reason) = %q", got)
	}
	// Agent output in a reason never drives the terminal.
	e.Reason = "gate cmd:t failed: \x1b]52;c;eA==\x07\x1b[2J\u009b2J"
	if got := eventLine(e); got != `j.s.1.00000000 running → failed by cli pid 9: gate cmd:t failed: \x1b]52;c;eA==\x07\x1b[2J\u009b2J` {
		t.Errorf("eventLine (control characters) = %q", got)
	}
	gs[1].Name = "cmd:\x1b]0;t\x07"
	if got := gateSummary(gs); got != `1/3 (cmd:\x1b]0;t\x07 failed)` {
		t.Errorf("gateSummary (control characters) = %q", got)
	}
}

// --- the live view in a real terminal (tmux) ---

// tmuxSession drives a tmux server of its own (its own socket and tmp
// dir), killed when the test ends.
type tmuxSession struct {
	t    *testing.T
	bin  string
	sock string
	env  []string
}

func (s *tmuxSession) run(args ...string) string {
	s.t.Helper()
	cmd := exec.Command(s.bin, append([]string{"-L", s.sock, "-f", "/dev/null"}, args...)...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (s *tmuxSession) screen() string { return s.run("capture-pane", "-p", "-t", "w") }

// waitScreen polls the pane until ok accepts it (bounded).
func (s *tmuxSession) waitScreen(what string, ok func(string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		last = s.screen()
		if ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("waiting for %s: gave up; the screen is:\n%s", what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWatchLiveViewInTerminal(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("tmux not installed")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not found")
	}
	// TestMain (testscript) put this test binary on PATH as orch-hooks:
	// run under that name it is the real command.
	bin, err := exec.LookPath("orch-hooks")
	if err != nil {
		t.Fatalf("orch-hooks not on PATH: %v", err)
	}

	repo := gittest.New(t)
	if err := os.WriteFile(filepath.Join(repo.Dir, "orch.toml"), []byte("[[stages]]\nname = \"implement\"\nrun = \"true\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{}
	for _, kv := range repo.Env() {
		if !strings.HasPrefix(kv, "TMUX") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "NO_COLOR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"TMUX_TMPDIR="+t.TempDir(), "SHELL=/bin/sh", "GORACE=atexit_sleep_ms=10")
	orch := func(args ...string) string {
		cmd := exec.Command(bin, append([]string{"-C", repo.Dir}, args...)...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("orch-hooks %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return strings.TrimSpace(stdout.String())
	}
	orch("init")
	id := orch("enqueue", "--branch", "feat/a")

	s := &tmuxSession{t: t, bin: tmux, sock: fmt.Sprintf("orch-hooks-test-%d", os.Getpid()), env: env}
	s.run("new-session", "-d", "-s", "w", "-x", "120", "-y", "40", "-c", repo.Dir, "exec env PS1='test$ ' sh -i")
	t.Cleanup(func() {
		cmd := exec.Command(tmux, "-L", s.sock, "kill-server")
		cmd.Env = env
		cmd.Run()
	})
	s.waitScreen("the shell prompt", func(sc string) bool { return strings.Contains(sc, "test$") })

	// "before-2" is only on the screen once echo has run (the typed line
	// shows the unexpanded $((1+1))).
	s.run("send-keys", "-t", "w", "-l", "echo before-$((1+1)); orch-hooks watch --no-dispatch")
	s.run("send-keys", "-t", "w", "Enter")
	sc := s.waitScreen("the live view with the queued job", func(sc string) bool {
		return strings.Contains(sc, "QUEUED (1)") && strings.Contains(sc, "LAST PASS")
	})
	lines := strings.Split(strings.TrimRight(sc, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "orch-hooks watch  "+repo.Dir) || !strings.Contains(lines[0], "watching only") {
		t.Errorf("first line of the live view: %q", lines[0])
	}
	for _, want := range []string{id + "  implement  feat/a", "EVENTS", "RUNNING (0)", "LEASES (0)"} {
		if !strings.Contains(sc, want) {
			t.Errorf("live view lacks %q:\n%s", want, sc)
		}
	}
	if strings.Contains(sc, "before-2") || strings.Contains(sc, "test$") {
		t.Errorf("the live view is not on the alternate screen (the shell's lines show through):\n%s", sc)
	}
	if strings.Contains(sc, "\x1b") {
		t.Errorf("escape codes left on the screen:\n%q", sc)
	}

	// A broken orch.toml shows at the top, file:line:key, within a redraw
	// or two; fixed, the error goes and the reload is said.
	cfgPath := filepath.Join(repo.Dir, "orch.toml")
	if err := os.WriteFile(cfgPath, []byte("max_concurrency = 0\n[[stages]]\nname = \"implement\"\nrun = \"true\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sc = s.waitScreen("the config error", func(sc string) bool { return strings.Contains(sc, "CONFIG ERROR") })
	// Wrapped at the terminal's width, never cut.
	lines = strings.Split(strings.TrimRight(sc, "\n"), "\n")
	var shown []string
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, "  running on the config") {
			break
		}
		shown = append(shown, strings.TrimSpace(l))
	}
	if want := "CONFIG ERROR " + cfgPath + ":1: max_concurrency: must be at least 1 (got 0)"; strings.Join(shown, " ") != want {
		t.Errorf("the lines after the header, want %q:\n%s", want, sc)
	}
	if !strings.Contains(sc, "no jobs are started until the file is fixed") || !strings.Contains(sc, "QUEUED (1)") {
		t.Errorf("the view with a config error lacks the fallback or the jobs:\n%s", sc)
	}
	if err := os.WriteFile(cfgPath, []byte("max_concurrency = 2\n[[stages]]\nname = \"implement\"\nrun = \"true\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.waitScreen("the reload", func(sc string) bool {
		return !strings.Contains(sc, "CONFIG ERROR") && strings.Contains(sc, "config reloaded from "+cfgPath+": max_concurrency 1 → 2")
	})

	// Smaller: the view is redrawn to fit — events give way, the last pass
	// stays on the last row.
	s.run("resize-window", "-t", "w", "-x", "70", "-y", "12")
	sc = s.waitScreen("the redraw at 70x12", func(sc string) bool {
		l := strings.Split(strings.TrimRight(sc, "\n"), "\n")
		return len(l) <= 12 && strings.Contains(sc, "QUEUED (1)") && !strings.Contains(sc, "EVENTS") &&
			strings.HasPrefix(l[len(l)-1], "LAST PASS")
	})
	for i, l := range strings.Split(strings.TrimRight(sc, "\n"), "\n") {
		if utf8.RuneCountInString(l) > 70 {
			t.Errorf("row %d wider than 70: %q", i+1, l)
		}
		if i == 0 && !strings.HasPrefix(l, "orch-hooks watch") {
			t.Errorf("after the resize the header is gone: %q", l)
		}
	}

	// Ctrl-C: watch exits 0 and the shell's screen is back as it was.
	s.run("send-keys", "-t", "w", "C-c")
	// The prompt after "before-2" means watch has exited (the screen is
	// restored a moment before).
	prompt := regexp.MustCompile(`(?m)^before-2\n(.*\n)*test\$\s*$`)
	s.waitScreen("the shell's screen back and its prompt", func(sc string) bool {
		return !strings.Contains(sc, "QUEUED") && prompt.MatchString(strings.TrimRight(sc, "\n"))
	})
	s.run("send-keys", "-t", "w", "-l", "echo watch-exit=$?")
	s.run("send-keys", "-t", "w", "Enter")
	exitLine := regexp.MustCompile(`(?m)watch-exit=(\d+)\s*$`)
	sc = s.waitScreen("watch's exit status", func(sc string) bool { return exitLine.MatchString(sc) })
	if m := exitLine.FindStringSubmatch(sc); m[1] != "0" {
		t.Errorf("watch exited %s after Ctrl-C, want 0:\n%s", m[1], sc)
	}
	// --no-dispatch started nothing.
	if out := orch("show", id); !regexp.MustCompile(`(?m)^status: +queued$`).MatchString(out) {
		t.Errorf("the job after watch --no-dispatch:\n%s", out)
	}
}

// TestRenderEscapesAgentText: a reason, a holder, a gate name and a path
// that hold terminal controls are shown escaped; the only escape codes in a
// frame are the view's own colours.
func TestRenderEscapesAgentText(t *testing.T) {
	inUTC(t)
	const evil = "\x1b]52;c;eA==\x07\x1b[2J\x1b]0;t\x07\u009b2J\x7f"
	const shown = `\x1b]52;c;eA==\x07\x1b[2J\x1b]0;t\x07\u009b2J\u007f`
	f := fixedFrame()
	f.Repo = "/tmp/" + evil
	f.Jobs[0].Reason = evil
	f.Jobs[0].Gates = []gitstate.GateResult{gate("cmd:"+evil, false, evil)}
	f.Leases[0].Holder = evil
	f.Events = append(f.Events, gitstate.Transition{Job: f.Jobs[0].ID, From: gitstate.Running, To: gitstate.Failed, Actor: "cli", PID: 1, Reason: evil, At: f.Now})
	for _, color := range []bool{false, true} {
		lines := render(f, 400, 80, color)
		checkFits(t, lines, 400, 80)
		text := strings.Join(lines, "\n")
		plain := sgr.ReplaceAllString(text, "")
		if strings.ContainsAny(plain, "\x1b\x07\x7f\u009b") {
			t.Errorf("colour %v: a control character reached the frame:\n%q", color, plain)
		}
		for _, want := range []string{"orch-hooks watch  /tmp/" + shown, "main         " + shown} {
			if !strings.Contains(plain, want) {
				t.Errorf("colour %v: frame lacks %q:\n%s", color, want, plain)
			}
		}
		if n := strings.Count(plain, `\x1b]52;c;eA==`); n < 4 {
			t.Errorf("colour %v: escaped form shown %d times, want header, reason, gate, holder, event:\n%s", color, n, plain)
		}
	}
}
