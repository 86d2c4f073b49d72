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

// String is the one-line version `capstan version` prints.
func String() string {
	return fmt.Sprintf("capstan %s (commit %s, built %s, %s %s/%s)", Version, Commit, Date, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
