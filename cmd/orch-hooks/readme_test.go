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
