package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// readme is README.md, whose CI recipes the ci_* scripts run.
const readme = "../../README.md"

// ciInstall is in each recipe: the install line that works from a clone
// today. The scripts skip it (orch-hooks is on their PATH already, and
// they have no network); TestCIRecipeInstallLine checks it is there.
var ciInstall = regexp.MustCompile(`^git clone --depth 1 https://github\.com/orch-hooks/orch-hooks (\S+) && go -C (\S+) install \./cmd/orch-hooks$`)

// cmdCIRecipe runs "cirecipe github|gitlab FILE": FILE is the shell
// commands of README's recipe for that forge, in order, as the forge runs
// them (each GitHub run: step and each GitLab script: line, in one shell
// with errexit), the install line left out. The recipe is the yaml block
// after the "<!-- ci-recipe:NAME -->" marker.
func cmdCIRecipe(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: cirecipe github|gitlab FILE")
	}
	b, err := os.ReadFile(readme)
	ts.Check(err)
	cmds, err := ciRecipe(string(b), args[0])
	ts.Check(err)
	var out strings.Builder
	out.WriteString("set -e\n")
	for _, c := range cmds {
		if ciInstall.MatchString(c) {
			out.WriteString("# install step: orch-hooks is on PATH\n")
			continue
		}
		out.WriteString(c + "\n")
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(out.String()), 0o644))
}

// ciRecipe returns the shell commands of README's recipe for forge.
func ciRecipe(readme, forge string) ([]string, error) {
	marker := "<!-- ci-recipe:" + forge + " -->"
	i := strings.Index(readme, marker)
	if i < 0 {
		return nil, fmt.Errorf("README has no %s", marker)
	}
	rest := readme[i+len(marker):]
	start := strings.Index(rest, "```yaml\n")
	if start < 0 {
		return nil, fmt.Errorf("README: no yaml block after %s", marker)
	}
	rest = rest[start+len("```yaml\n"):]
	end := strings.Index(rest, "```")
	if end < 0 {
		return nil, fmt.Errorf("README: unterminated yaml block after %s", marker)
	}
	lines := strings.Split(strings.TrimRight(rest[:end], "\n"), "\n")
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	var cmds []string
	switch forge {
	case "github":
		// "- run: CMD", or "- run: |" and a more indented block.
		for n := 0; n < len(lines); n++ {
			l := lines[n]
			t := strings.TrimSpace(l)
			if !strings.HasPrefix(t, "- run: ") {
				continue
			}
			c := strings.TrimPrefix(t, "- run: ")
			if c != "|" {
				cmds = append(cmds, c)
				continue
			}
			for n+1 < len(lines) && indent(lines[n+1]) > indent(l) {
				n++
				cmds = append(cmds, strings.TrimSpace(lines[n]))
			}
		}
	case "gitlab":
		// The items of "script:".
		for n := 0; n < len(lines); n++ {
			if strings.TrimSpace(lines[n]) != "script:" {
				continue
			}
			in := indent(lines[n])
			for n+1 < len(lines) && indent(lines[n+1]) > in {
				n++
				t := strings.TrimSpace(lines[n])
				if !strings.HasPrefix(t, "- ") {
					return nil, fmt.Errorf("README gitlab recipe: script line %q is not a list item", t)
				}
				cmds = append(cmds, strings.TrimPrefix(t, "- "))
			}
		}
	default:
		return nil, fmt.Errorf("no recipe kind %q (github or gitlab)", forge)
	}
	if len(cmds) == 0 {
		return nil, fmt.Errorf("README %s recipe: no commands found", forge)
	}
	return cmds, nil
}

// TestCIRecipeInstallLine: each recipe installs orch-hooks in the way that
// works from a clone today (go install ...@latest needs the module to be
// published), exactly once.
func TestCIRecipeInstallLine(t *testing.T) {
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	for _, forge := range []string{"github", "gitlab"} {
		cmds, err := ciRecipe(string(b), forge)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range cmds {
			if m := ciInstall.FindStringSubmatch(c); m != nil && m[1] == m[2] {
				n++
			}
			if strings.Contains(c, "@latest") {
				t.Errorf("%s recipe: %q needs the module published", forge, c)
			}
		}
		if n != 1 {
			t.Errorf("%s recipe: %d install lines (git clone ... && go -C DIR install ./cmd/orch-hooks), want 1: %q", forge, n, cmds)
		}
	}
}
