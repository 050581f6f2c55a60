// Package config reads orch.toml: defaults, validation with file:line:key in
// every message, and the ORCH_* environment overrides (which win).
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/statefile"
)

// FileName is the config file at the top of the main worktree.
const FileName = "orch.toml"

// Defaults of every setting; orch.toml.example documents the same values.
const (
	TargetDefault           = "main"
	MaxConcurrencyDefault   = 1
	WorktreesDefault        = ".orch/worktrees"
	ReaperIntervalSDefault  = 30
	DeadTicksDefault        = 3
	FinalizeGraceSDefault   = 300
	MaxRunningSDefault      = 14400
	LeaseTTLSDefault        = 900
	FinalizeTimeoutSDefault = 120
	HookBudgetMSDefault     = 200
	GCOlderThanSDefault     = 7 * 24 * 3600
	LogMaxBytesDefault      = 16 << 20
	// LogMaxBytesMin keeps room for a head, a tail and the cut marker.
	LogMaxBytesMin = 4096
	// RemoteClockSkewSDefault is the clock difference between machines a
	// shared lease's TTL tolerates (remote mode).
	RemoteClockSkewSDefault = 30
	// RemoteHeartbeatSDefault is how often the runner of a shared job
	// writes a beat to its record (remote mode).
	RemoteHeartbeatSDefault = 10
	// RemoteHeartbeatTTLSDefault is how long a machine must see a running
	// shared job's record unchanged before it expires the job.
	RemoteHeartbeatTTLSDefault = 60
)

// Stage kinds.
const (
	KindCommand = "command"
	KindMerge   = "merge"
)

// Built-in gate names; "cmd:SHELL" runs a command.
const (
	GateCommitsAhead  = "commits_ahead"
	GateMergeable     = "mergeable"
	GateCleanWorktree = "clean_worktree"
	GateCmdPrefix     = "cmd:"
)

// Config is a parsed, validated orch.toml with overrides applied.
type Config struct {
	// Path is the file this was read from; empty when no file exists and
	// every value is a default.
	Path string `toml:"-"`
	// Warnings are settings that work but will likely not do what the user
	// wants, located like errors. Load never fails for them; every command
	// that loads the configuration prints them on stderr.
	Warnings []*Error `toml:"-"`

	Target         string  `toml:"target"`
	MaxConcurrency int     `toml:"max_concurrency"`
	Worktrees      string  `toml:"worktrees"`
	Reaper         Reaper  `toml:"reaper"`
	Lease          Lease   `toml:"lease"`
	Hooks          Hooks   `toml:"hooks"`
	GC             GC      `toml:"gc"`
	Logs           Logs    `toml:"logs"`
	Remote         Remote  `toml:"remote"`
	Stages         []Stage `toml:"stages"`
}

// Remote holds the settings of remote mode (docs/DISTRIBUTED.md): with a
// Name, merge leases live on that remote as refs under refs/orch/, shared
// by every machine that pushes there. Empty Name: everything stays local.
type Remote struct {
	// Name is a remote of the repository (git remote -v), e.g. "origin".
	Name string `toml:"name"`
	// ClockSkewS is how far apart machines' clocks may be: a lease of
	// another machine is stale only once it has not been renewed for its
	// TTL plus this long.
	ClockSkewS int `toml:"clock_skew_s"`
	// ServerHook: the remote runs orch-hooks install --server, so merges
	// send their fencing token as a push option for it to check (a server
	// that does not advertise push options refuses such pushes).
	ServerHook bool `toml:"server_hook"`
	// HeartbeatS is how often the runner of a shared job writes a beat.
	HeartbeatS int `toml:"heartbeat_s"`
	// HeartbeatTTLS: a running shared job whose record a machine has seen
	// unchanged for this long, on that machine's own clock, is expired
	// (failed, "heartbeat expired"). At least 3 × heartbeat_s.
	HeartbeatTTLS int `toml:"heartbeat_ttl_s"`
	// Host names this machine in shared records; empty: the host name
	// (os.Hostname). The environment variable ORCH_HOST wins over both.
	Host string `toml:"host"`
}

// Enabled reports whether remote mode is on.
func (r Remote) Enabled() bool { return r.Name != "" }

// Heartbeat is HeartbeatS as a duration.
func (r Remote) Heartbeat() time.Duration { return time.Duration(r.HeartbeatS) * time.Second }

// HeartbeatTTL is HeartbeatTTLS as a duration.
func (r Remote) HeartbeatTTL() time.Duration { return time.Duration(r.HeartbeatTTLS) * time.Second }

// MachineName is the name of this machine in shared records: ORCH_HOST,
// else Host, else the host name.
func (r Remote) MachineName() (string, error) {
	if h := os.Getenv("ORCH_HOST"); h != "" {
		return h, nil
	}
	if r.Host != "" {
		return r.Host, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", fmt.Errorf("this machine's name for shared records: %v; set [remote] host in orch.toml or ORCH_HOST", err)
	}
	return h, nil
}

// ClockSkew is ClockSkewS as a duration.
func (r Remote) ClockSkew() time.Duration { return time.Duration(r.ClockSkewS) * time.Second }

// Hooks holds the settings of what installed git hooks do.
type Hooks struct {
	// BudgetMS bounds the reaper pass a hook makes; work that needs longer
	// (gates with commands) is handed to a background pass.
	BudgetMS int `toml:"budget_ms"`
}

// Budget is BudgetMS as a duration.
func (h Hooks) Budget() time.Duration { return time.Duration(h.BudgetMS) * time.Millisecond }

// Logs holds the settings of job logs.
type Logs struct {
	// MaxBytes caps the disk space a job's log takes while its monitor
	// lives: past it, the monitor punches a hole between the first and
	// the last MaxBytes/2 bytes (readers print a line naming the bytes
	// cut in its place).
	MaxBytes int `toml:"max_bytes"`
}

// GC holds the settings of gc.
type GC struct {
	// OlderThanS: jobs ended longer ago than this are removed by gc.
	OlderThanS int `toml:"older_than_s"`
	// KeepMergedWorktrees keeps a task's worktree after its merge job
	// ends done, until gc; by default the worktree is removed then (its
	// branch merged, no job of the task queued or running, nothing
	// uncommitted in it).
	KeepMergedWorktrees bool `toml:"keep_merged_worktrees"`
}

// OlderThan is OlderThanS as a duration.
func (g GC) OlderThan() time.Duration { return time.Duration(g.OlderThanS) * time.Second }

// Reaper holds the reaper's settings.
type Reaper struct {
	Enabled        bool `toml:"enabled"`
	IntervalS      int  `toml:"interval_s"`
	DeadTicks      int  `toml:"dead_ticks"`
	FinalizeGraceS int  `toml:"finalize_grace_s"`
	MaxRunningS    int  `toml:"max_running_s"`
}

// Interval is IntervalS as a duration.
func (r Reaper) Interval() time.Duration { return time.Duration(r.IntervalS) * time.Second }

// FinalizeGrace is FinalizeGraceS as a duration.
func (r Reaper) FinalizeGrace() time.Duration { return time.Duration(r.FinalizeGraceS) * time.Second }

// MaxRunning is MaxRunningS as a duration.
func (r Reaper) MaxRunning() time.Duration { return time.Duration(r.MaxRunningS) * time.Second }

// Lease holds the merge lease settings.
type Lease struct {
	ReclaimEnabled bool `toml:"reclaim_enabled"`
	TTLS           int  `toml:"ttl_s"`
}

// TTL is TTLS as a duration.
func (l Lease) TTL() time.Duration { return time.Duration(l.TTLS) * time.Second }

// Stage is one step of the pipeline.
type Stage struct {
	Name             string   `toml:"name"`
	Kind             string   `toml:"kind"`
	Run              string   `toml:"run"`
	Gates            []string `toml:"gates"`
	Finalize         []string `toml:"finalize"`
	FinalizeTimeoutS int      `toml:"finalize_timeout_s"`
	Next             string   `toml:"next"`
}

// FinalizeTimeout is FinalizeTimeoutS as a duration.
func (s Stage) FinalizeTimeout() time.Duration {
	return time.Duration(s.FinalizeTimeoutS) * time.Second
}

// Default returns the configuration used when no orch.toml exists.
func Default() *Config {
	return &Config{
		Target:         TargetDefault,
		MaxConcurrency: MaxConcurrencyDefault,
		Worktrees:      WorktreesDefault,
		Reaper: Reaper{
			Enabled:        true,
			IntervalS:      ReaperIntervalSDefault,
			DeadTicks:      DeadTicksDefault,
			FinalizeGraceS: FinalizeGraceSDefault,
			MaxRunningS:    MaxRunningSDefault,
		},
		Lease:  Lease{ReclaimEnabled: true, TTLS: LeaseTTLSDefault},
		Hooks:  Hooks{BudgetMS: HookBudgetMSDefault},
		GC:     GC{OlderThanS: GCOlderThanSDefault},
		Logs:   Logs{MaxBytes: LogMaxBytesDefault},
		Remote: Remote{ClockSkewS: RemoteClockSkewSDefault, HeartbeatS: RemoteHeartbeatSDefault, HeartbeatTTLS: RemoteHeartbeatTTLSDefault},
	}
}

// Stage returns the stage named name.
func (c *Config) Stage(name string) (Stage, bool) {
	for _, s := range c.Stages {
		if s.Name == name {
			return s, true
		}
	}
	return Stage{}, false
}

// StageNames lists the stage names in order, for messages.
func (c *Config) StageNames() []string {
	var out []string
	for _, s := range c.Stages {
		out = append(out, s.Name)
	}
	return out
}

// Error is a configuration problem, located as precisely as it can be: the
// file and line of the key, or the environment variable that set it.
type Error struct {
	File string // config file, or "" for an environment variable
	Line int    // 0 when unknown
	Key  string // dotted key, or the environment variable's name
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads the config file at path. A missing file yields the defaults
// unless required is set (the user named the file). Environment overrides
// are applied after the file and validated like it.
func Load(path string, required bool) (*Config, error) {
	c, _, err := load(path, required)
	return c, err
}

// load is Load that also returns the bytes it decoded (nil without a
// file), so that a Reloader can tell a changed file from a touched one.
func load(path string, required bool) (*Config, []byte, error) {
	// Followed if a symlink (a user's dotfiles may hold it), never waited
	// on if a FIFO.
	data, err := statefile.ReadFileFollow(path, statefile.MaxSizeDefault)
	c, err := parse(path, required, data, err)
	return c, data, err
}

// parse decodes data, read from path with readErr, applies the
// environment and validates.
func parse(path string, required bool, data []byte, err error) (*Config, error) {
	c := Default()
	switch {
	case err == nil:
		c.Path = path
		if err := decode(c, path, data); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist) && !required:
	default:
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == path {
			err = pe.Err // the file is named already
		}
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	src := source{file: path, data: data}
	if c.Path == "" {
		src = source{}
	}
	env, err := applyEnv(c)
	if err != nil {
		return nil, err
	}
	if err := validate(c, src, env); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(c *Config, file string, data []byte) error {
	// Stages are a list, so defaults for their fields are filled in after
	// decoding: a zero FinalizeTimeoutS means "not given".
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return &Error{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		// Type mismatches come as plain errors in the decoder's own format.
		if m := decodeErrRE().FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &Error{File: file, Line: line, Key: m[2], Msg: m[3]}
		}
		return &Error{File: file, Msg: err.Error()}
	}
	src := source{file: file, data: data}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		keyPath := make([]any, len(k))
		for i, p := range k {
			keyPath[i] = p
		}
		return &Error{File: file, Line: src.line(keyPath...), Key: k.String(),
			Msg: "unknown key; see orch.toml.example for the keys there are"}
	}
	for i := range c.Stages {
		if !md.IsDefined("stages") {
			break
		}
		if c.Stages[i].FinalizeTimeoutS == 0 && !src.defined(i, "finalize_timeout_s") {
			c.Stages[i].FinalizeTimeoutS = FinalizeTimeoutSDefault
		}
		if c.Stages[i].Kind == "" {
			c.Stages[i].Kind = KindCommand
		}
	}
	return nil
}

// decodeErrRE is compiled on the first bad config, not at start-up: every
// hook starts this binary.
var decodeErrRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)
})

// envSet records which keys the environment overrode, so that a bad value is
// reported against the variable, not the file.
type envSet map[string]string

func applyEnv(c *Config) (envSet, error) {
	set := envSet{}
	ints := []struct {
		env, key string
		dst      *int
	}{
		{"ORCH_REAPER_INTERVAL_S", "reaper.interval_s", &c.Reaper.IntervalS},
		{"ORCH_REAPER_DEAD_TICKS", "reaper.dead_ticks", &c.Reaper.DeadTicks},
		{"ORCH_REAPER_MAX_RUNNING_S", "reaper.max_running_s", &c.Reaper.MaxRunningS},
		{"ORCH_REAPER_FINALIZE_GRACE_S", "reaper.finalize_grace_s", &c.Reaper.FinalizeGraceS},
		{"ORCH_LEASE_TTL_S", "lease.ttl_s", &c.Lease.TTLS},
		{"ORCH_HOOKS_BUDGET_MS", "hooks.budget_ms", &c.Hooks.BudgetMS},
	}
	for _, o := range ints {
		v, ok := os.LookupEnv(o.env)
		if !ok || v == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return nil, &Error{Key: o.env, Msg: fmt.Sprintf("%q is not a whole number of seconds or ticks; unset it or give e.g. %s=30", v, o.env)}
		}
		*o.dst = n
		set[o.key] = o.env
	}
	bools := []struct {
		env, key string
		dst      *bool
	}{
		{"ORCH_REAPER_ENABLED", "reaper.enabled", &c.Reaper.Enabled},
		{"ORCH_LEASE_RECLAIM_ENABLED", "lease.reclaim_enabled", &c.Lease.ReclaimEnabled},
	}
	for _, o := range bools {
		v, ok := os.LookupEnv(o.env)
		if !ok || v == "" {
			continue
		}
		b, err := parseBool(v)
		if err != nil {
			return nil, &Error{Key: o.env, Msg: fmt.Sprintf("%q is not a boolean; use 1 or 0 (true/false, yes/no, on/off also work)", v)}
		}
		*o.dst = b
		set[o.key] = o.env
	}
	return set, nil
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

func validate(c *Config, src source, env envSet) error {
	bad := func(msg string, path ...any) error {
		key := keyString(path)
		if v, ok := env[key]; ok {
			return &Error{Key: v, Msg: msg}
		}
		return &Error{File: src.file, Line: src.line(path...), Key: key, Msg: msg}
	}
	if err := gitstate.ValidateBranch(c.Target); err != nil {
		return bad(err.Error(), "target")
	}
	if c.MaxConcurrency < 1 {
		return bad(fmt.Sprintf("must be at least 1 (got %d)", c.MaxConcurrency), "max_concurrency")
	}
	if strings.TrimSpace(c.Worktrees) == "" || strings.ContainsAny(c.Worktrees, "\x00\n\r") {
		return bad("must be a directory path (default "+WorktreesDefault+")", "worktrees")
	}
	atLeast := func(v, min int, path ...any) error {
		if v < min {
			return bad(fmt.Sprintf("must be at least %d (got %d)", min, v), path...)
		}
		return nil
	}
	for _, chk := range []error{
		atLeast(c.Reaper.IntervalS, 0, "reaper", "interval_s"),
		atLeast(c.Reaper.DeadTicks, 1, "reaper", "dead_ticks"),
		atLeast(c.Reaper.FinalizeGraceS, 0, "reaper", "finalize_grace_s"),
		atLeast(c.Reaper.MaxRunningS, 1, "reaper", "max_running_s"),
		atLeast(c.Lease.TTLS, 1, "lease", "ttl_s"),
		atLeast(c.Hooks.BudgetMS, 1, "hooks", "budget_ms"),
		atLeast(c.GC.OlderThanS, 0, "gc", "older_than_s"),
		atLeast(c.Logs.MaxBytes, LogMaxBytesMin, "logs", "max_bytes"),
		atLeast(c.Remote.ClockSkewS, 0, "remote", "clock_skew_s"),
		atLeast(c.Remote.HeartbeatS, 1, "remote", "heartbeat_s"),
	} {
		if chk != nil {
			return chk
		}
	}
	if n := c.Remote.Name; n != "" && (strings.HasPrefix(n, "-") || strings.ContainsAny(n, "\x00\n\r\t /\\:") || strings.Contains(n, "..")) {
		return bad(fmt.Sprintf("%q is not a remote's name; give one that git remote -v lists, e.g. \"origin\" (empty: remote mode off)", n), "remote", "name")
	}
	if c.Remote.HeartbeatTTLS < 3*c.Remote.HeartbeatS {
		return bad(fmt.Sprintf("%d is less than 3 × heartbeat_s (%d): a live job would expire after two late beats; raise heartbeat_ttl_s to at least %d or lower heartbeat_s", c.Remote.HeartbeatTTLS, c.Remote.HeartbeatS, 3*c.Remote.HeartbeatS), "remote", "heartbeat_ttl_s")
	}
	if h := c.Remote.Host; h != "" && (strings.ContainsAny(h, "\x00\n\r\t") || len(h) > 200) {
		return bad(fmt.Sprintf("%q is not a usable machine name: no control characters, at most 200 bytes", h), "remote", "host")
	}
	names := map[string]int{}
	for i, s := range c.Stages {
		if err := gitstate.ValidateStage(s.Name); err != nil {
			return bad(err.Error(), "stages", i, "name")
		}
		if j, dup := names[s.Name]; dup {
			return bad(fmt.Sprintf("stage %q is defined twice (stages %d and %d); stage names must be unique", s.Name, j+1, i+1), "stages", i, "name")
		}
		names[s.Name] = i
		switch s.Kind {
		case KindCommand:
			if strings.TrimSpace(s.Run) == "" {
				return bad(fmt.Sprintf("stage %q has no command; set run = \"...\" or kind = \"merge\"", s.Name), "stages", i, "run")
			}
		case KindMerge:
			if s.Run != "" {
				return bad(fmt.Sprintf("stage %q is a merge stage and cannot also run a command; remove run", s.Name), "stages", i, "run")
			}
		default:
			return bad(fmt.Sprintf("unknown stage kind %q; use \"command\" (the default) or \"merge\"", s.Kind), "stages", i, "kind")
		}
		for _, g := range s.Gates {
			if err := ValidateGate(g); err != nil {
				return bad(fmt.Sprintf("stage %q: %v", s.Name, err), "stages", i, "gates")
			}
		}
		for _, f := range s.Finalize {
			if strings.TrimSpace(f) == "" {
				return bad(fmt.Sprintf("stage %q has an empty finalize step", s.Name), "stages", i, "finalize")
			}
		}
		if err := atLeast(s.FinalizeTimeoutS, 1, "stages", i, "finalize_timeout_s"); err != nil {
			return err
		}
	}
	for _, s := range c.Stages {
		if len(s.Finalize) == 0 || s.FinalizeTimeoutS <= c.Reaper.FinalizeGraceS {
			continue
		}
		// Tier 2 reaps a live monitor whose last progress stamp (a step
		// started) is older than the grace: a step allowed to run longer
		// than that is cut short by the reaper, not by its own timeout.
		w := bad(fmt.Sprintf("%d s is shorter than stage %q's finalize_timeout_s = %d: the reaper ends a job whose finalize step has run for finalize_grace_s, before the step's own timeout; raise finalize_grace_s to at least %d or lower the stage's finalize_timeout_s",
			c.Reaper.FinalizeGraceS, s.Name, s.FinalizeTimeoutS, s.FinalizeTimeoutS), "reaper", "finalize_grace_s").(*Error)
		c.Warnings = append(c.Warnings, w)
	}
	for i, s := range c.Stages {
		if s.Next == "" {
			continue
		}
		if _, ok := names[s.Next]; !ok {
			return bad(fmt.Sprintf("stage %q: next stage %q is not defined; stages are %s", s.Name, s.Next, strings.Join(c.StageNames(), ", ")), "stages", i, "next")
		}
		// Walk the chain from here; coming back means the pipeline never ends.
		seen := map[string]bool{s.Name: true}
		for n := s.Next; n != ""; {
			if seen[n] {
				return bad(fmt.Sprintf("stage %q: the next chain comes back to %q, so the pipeline would never end", s.Name, n), "stages", i, "next")
			}
			seen[n] = true
			n = c.Stages[names[n]].Next
		}
	}
	return nil
}

// ValidateGate checks one gate name.
func ValidateGate(g string) error {
	switch {
	case g == GateCommitsAhead, g == GateMergeable, g == GateCleanWorktree:
		return nil
	case strings.HasPrefix(g, GateCmdPrefix):
		if strings.TrimSpace(strings.TrimPrefix(g, GateCmdPrefix)) == "" {
			return fmt.Errorf("gate %q has an empty command", g)
		}
		return nil
	}
	return fmt.Errorf("unknown gate %q; use %s, %s, %s or cmd:SHELL", g, GateCommitsAhead, GateMergeable, GateCleanWorktree)
}

// Find returns the config file path for a repository: the --config flag if
// given, else orch.toml at the top of the main worktree (the current
// worktree for a repository whose main worktree is unknown).
func Find(flag, mainWorktree, worktree string) (path string, required bool) {
	if flag != "" {
		return flag, true
	}
	top := mainWorktree
	if top == "" {
		top = worktree
	}
	return filepath.Join(top, FileName), false
}
