package main

import (
	"os"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/txtar"
)

// The README's pipeline example is tested as written: the script
// readme_pipeline_master.txtar runs it in a master repository, and this
// test holds that script to the README — the stages, the two scripts byte
// for byte, and every orch-hooks command of the example in its order.
func TestREADMEPipelineExampleIsTheScript(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "## A pipeline, step by step\n"
	text := string(readme)
	i := strings.Index(text, heading)
	if i < 0 {
		t.Fatalf("README.md has no %q section", strings.TrimSpace(heading))
	}
	section := text[i+len(heading):]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	blocks := fencedBlocks(section)
	if len(blocks) != 5 {
		t.Fatalf("the pipeline section has %d code blocks, want 5 (init, stages, agent.sh, review.sh, commands): update this test with the README", len(blocks))
	}
	ar, err := txtar.ParseFile("../../testdata/script/readme_pipeline_master.txtar")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range ar.Files {
		files[f.Name] = string(f.Data)
	}
	for k, name := range map[int]string{1: "stages.toml", 2: "agent.sh", 3: "review.sh"} {
		if files[name] != blocks[k] {
			t.Errorf("README's block %d differs from %s of the script:\nREADME:\n%s\nscript:\n%s", k, name, blocks[k], files[name])
		}
	}
	// The commands, in order, each as an exec line of the script.
	script := strings.Split(string(ar.Comment), "\n")
	at := 0
	for _, b := range []string{blocks[0], blocks[4]} {
		for _, line := range strings.Split(strings.TrimSpace(b), "\n") {
			cmd, _, _ := strings.Cut(line, "#")
			want := "exec " + strings.TrimSpace(cmd)
			found := false
			for ; at < len(script); at++ {
				if script[at] == want {
					found = true
					at++
					break
				}
			}
			if !found {
				t.Errorf("README command %q is not run (in the README's order) by readme_pipeline_master.txtar", strings.TrimSpace(cmd))
			}
		}
	}
}

// fencedBlocks returns the contents of the ``` blocks of markdown text.
func fencedBlocks(text string) []string {
	var blocks []string
	var cur *strings.Builder
	for _, line := range strings.SplitAfter(text, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line)
		}
	}
	return blocks
}

// The README's "Several machines" recipe is tested as written: the script
// remote_readme.txtar runs it, and this test holds that script to the
// README — the stages byte for byte, and every command of the recipe in
// its order (a cd as the script's cd, an export as its env).
func TestREADMESeveralMachinesIsTheScript(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "## Several machines\n"
	text := string(readme)
	i := strings.Index(text, heading)
	if i < 0 {
		t.Fatalf("README.md has no %q section", strings.TrimSpace(heading))
	}
	section := text[i+len(heading):]
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	blocks := fencedBlocks(section)
	if len(blocks) != 4 {
		t.Fatalf("the Several machines section has %d code blocks, want 4 (remote and clone a, stages, commit and clone b, commands): update this test with the README", len(blocks))
	}
	ar, err := txtar.ParseFile("../../testdata/script/remote_readme.txtar")
	if err != nil {
		t.Fatal(err)
	}
	var stages string
	for _, f := range ar.Files {
		if f.Name == "stages.toml" {
			stages = string(f.Data)
		}
	}
	if stages != blocks[1] {
		t.Errorf("README's stages block differs from stages.toml of the script:\nREADME:\n%s\nscript:\n%s", blocks[1], stages)
	}
	script := strings.Split(string(ar.Comment), "\n")
	at := 0
	for _, b := range []string{blocks[0], blocks[2], blocks[3]} {
		for _, line := range strings.Split(strings.TrimSpace(b), "\n") {
			cmd, _, _ := strings.Cut(line, "#")
			cmd = strings.TrimSpace(cmd)
			want := "exec " + cmd
			switch {
			case strings.HasPrefix(cmd, "cd "):
				want = cmd
			case strings.HasPrefix(cmd, "export "):
				want = "env " + strings.TrimPrefix(cmd, "export ")
			}
			// The script quotes what sh would have unquoted.
			want = strings.ReplaceAll(want, `"`, `'`)
			found := false
			for ; at < len(script); at++ {
				if script[at] == want {
					found = true
					at++
					break
				}
			}
			if !found {
				t.Errorf("README command %q is not run (in the README's order) by remote_readme.txtar as %q", cmd, want)
			}
		}
	}
}
