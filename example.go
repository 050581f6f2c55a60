// Package orchhooks holds files of the project root that the command needs
// at run time. The code lives in the packages below it; see README.md.
package orchhooks

import (
	_ "embed"
	"strings"
)

// ExampleConfig is orch.toml.example, which `orch-hooks init` writes as
// orch.toml when the repository has none.
//
//go:embed orch.toml.example
var ExampleConfig string

// exampleTarget is the target line of orch.toml.example.
const exampleTarget = "\ntarget = \"main\"\n"

// ExampleConfigFor is ExampleConfig with its target line set to the
// line given (a TOML `target = "..."` line, newline included): byte for
// byte the example otherwise. It panics if the example has no target line,
// which a test of this package rules out.
func ExampleConfigFor(targetLine string) string {
	i := strings.Index(ExampleConfig, exampleTarget)
	if i < 0 {
		panic("orch.toml.example has no line " + strings.TrimSpace(exampleTarget))
	}
	return ExampleConfig[:i+1] + targetLine + ExampleConfig[i+len(exampleTarget):]
}
