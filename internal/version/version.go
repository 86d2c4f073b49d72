// Package version holds the build's version, set through -ldflags at build time.
package version

import (
	"fmt"
	"runtime"
)

// Set with -ldflags "-X github.com/capstan-power/capstan/internal/version.Version=…".
var (
	Version = "0.1.0-dev"
	Commit  = "unknown"
	Date    = "unknown"
)

// String is the one-line version `capstan version` and `capstan --version` print.
func String() string { return Of("capstan") }

// Of is the one-line version of the named program of this build: version, commit, build date,
// Go version and platform.
func Of(program string) string {
	return fmt.Sprintf("%s %s (commit %s, built %s, %s %s/%s)", program, Version, Commit, Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
