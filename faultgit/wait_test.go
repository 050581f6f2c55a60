package faultgit_test

import (
	"errors"
	"time"
)

func errAs(err error, target any) bool { return errors.As(err, target) }

// waitShort is the pause between two looks at a file another process
// creates.
func waitShort() { time.Sleep(2 * time.Millisecond) }
