package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is the release, set at link time by the Makefile
// (-ldflags "-X main.version=$(git describe --tags --always --dirty)").
var version = "devel"

// cmdVersion prints the version, the commit the binary was built from
// (from the build's VCS stamp; "-dirty" when the tree had changes) and the
// Go version.
func cmdVersion(out io.Writer) error {
	commit, goVersion := "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			commit = rev
			if modified == "true" {
				commit += "-dirty"
			}
		}
	}
	_, err := fmt.Fprintf(out, "xdoh %s\ncommit %s\ngo %s\n", version, commit, goVersion)
	return err
}
