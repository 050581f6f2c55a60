package orchhooks

import (
	"strings"
	"testing"
)

func TestExampleConfigFor(t *testing.T) {
	if got := ExampleConfigFor("target = \"main\"\n"); got != ExampleConfig {
		t.Error("ExampleConfigFor(the example's own line) is not the example")
	}
	got := ExampleConfigFor("target = \"master\"\n")
	if strings.Count(got, "\ntarget = \"master\"\n") != 1 || strings.Contains(got, "\ntarget = \"main\"\n") {
		t.Errorf("target line not replaced exactly once:\n%s", got)
	}
	if strings.Replace(got, "\ntarget = \"master\"\n", exampleTarget, 1) != ExampleConfig {
		t.Error("ExampleConfigFor changed more than the target line")
	}
}
