// Package hostfixtures provides sysfs trees of real server layouts that the host collectors
// (cpufreq, thermal) and the end-to-end tests run on. gen.go declares the trees; they are
// written on first use under testdata/generated (not committed), in a directory named after
// the declaration's hash, so a changed declaration gets fresh trees.
package hostfixtures

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// The fixture hosts.
const (
	// Intel is a 2-socket Xeon (4 CPUs shown): intel_pstate, coretemp, intel-rapl package and
	// dram, NVMe and PSU hwmon chips, a PSU sensor whose reads fail, a RAPL counter about to wrap.
	Intel = "intel"
	// AMD is an EPYC (8 CPUs shown): acpi-cpufreq, k10temp, AMD RAPL package and core, NVMe.
	AMD = "amd"
	// Big is a 2-socket Xeon with 192 logical CPUs and 96 coretemp core sensors.
	Big = "big"
)

// Hosts lists every fixture host.
var Hosts = []string{Intel, AMD, Big}

// Sysfs returns the absolute path of host's sysfs tree, writing the trees first if this
// checkout has none yet. It panics when they cannot be written: every caller is a test that
// cannot run without them.
func Sysfs(host string) string {
	return filepath.Join(trees(), host, "sys")
}

// Procfs returns the absolute path of host's procfs tree (absent: these collectors read sysfs).
func Procfs(host string) string {
	return filepath.Join(trees(), host, "proc")
}

var (
	treesOnce sync.Once
	treesDir  string
	treesErr  error
)

// trees returns the directory holding every host's tree, written once per process.
func trees() string {
	treesOnce.Do(func() { treesDir, treesErr = ensure() })
	if treesErr != nil {
		panic(fmt.Sprintf("hostfixtures: %v", treesErr))
	}
	return treesDir
}

// ensure returns the trees' directory for the current declaration, writing it if absent. Test
// binaries of several packages may do this at once: each writes into its own staging directory
// and renames it into place; the first rename wins and the others discard their copy.
func ensure() (string, error) {
	base := filepath.Join(dir(), "testdata", "generated")
	final := filepath.Join(base, version())
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("making the fixture directory: %w", err)
	}
	staging, err := os.MkdirTemp(base, ".staging-")
	if err != nil {
		return "", fmt.Errorf("making a staging directory for the fixture trees: %w", err)
	}
	defer os.RemoveAll(staging) // a no-op once renamed
	if err := Write(staging); err != nil {
		return "", err
	}
	if err := os.Chmod(staging, 0o755); err != nil {
		return "", fmt.Errorf("opening the fixture trees to readers: %w", err)
	}
	if err := os.Rename(staging, final); err != nil {
		if _, serr := os.Stat(final); serr != nil {
			return "", fmt.Errorf("moving the fixture trees into place: %w", err)
		}
		// Another test binary got there first with the same trees.
	}
	removeStale(base, filepath.Base(final))
	return final, nil
}

// removeStale removes trees of earlier declarations, and staging directories an interrupted
// run left (an hour old: no writer takes that long); failing to is harmless.
func removeStale(base, keep string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		stale := e.Name() != keep && !strings.HasPrefix(e.Name(), ".")
		if strings.HasPrefix(e.Name(), ".staging-") {
			info, err := e.Info()
			stale = err == nil && time.Since(info.ModTime()) > time.Hour
		}
		if e.IsDir() && stale {
			_ = os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
}

// version names the trees after gen.go's content, so editing the declaration regenerates them.
func version() string {
	src, err := os.ReadFile(filepath.Join(dir(), "gen.go"))
	if err != nil {
		return "unversioned"
	}
	sum := sha256.Sum256(src)
	return hex.EncodeToString(sum[:6])
}

func dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}
