// Package orchhooks holds files of the project root that the command needs
// at run time. The code lives in the packages below it; see README.md.
package orchhooks

import _ "embed"

// ExampleConfig is orch.toml.example, which `orch-hooks init` writes as
// orch.toml when the repository has none.
//
//go:embed orch.toml.example
var ExampleConfig string
