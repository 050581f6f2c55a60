//go:build linux || darwin || freebsd

// Command orch-hooks runs long jobs against a git repository, one branch per
// task, through stages with quality gates, and keeps their state true when
// the processes running them die. See README.md and DESIGN.md.
//
// This package is the command line only: flags, output and exit codes. The
// rules live in the packages it calls.
package main

import (
	"os"
)

func main() {
	os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
}
