package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: the release (devel: this test binary is linked without
// -X main.version), a commit line, and the Go version that built it.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := cmdVersion(&out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || lines[0] != "xdoh devel" || !strings.HasPrefix(lines[1], "commit ") || lines[2] != "go "+runtime.Version() {
		t.Fatalf("xdoh version:\n%s", out.String())
	}
}
