package layout

import (
	"errors"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// notInTheAgent are what the agent's binary must not link: the what-if simulator (the node and
// fleet simulations and the command that runs them) and its plotting, with gonum/plot's fonts,
// PDF, LaTeX and image packages. A Go binary's loaded pages end up resident, and gonum/plot
// parses a dozen embedded fonts in its package init in every process that links it: several
// MiB of the agent's memory for a command the daemon never runs. `capstan simulate` runs the
// capstan-simulate binary instead.
var notInTheAgent = []string{
	module + "capping/simulation",
	module + "capping/cluster/fleet",
	module + "internal/simcmd",
	"gonum.org/v1/plot",
	"codeberg.org/go-fonts",
	"codeberg.org/go-pdf",
	"codeberg.org/go-latex",
	"golang.org/x/image",
	"git.sr.ht/~sbinet/gg",
	"github.com/ajstarks/svgo",
	"github.com/golang/freetype",
}

// deps returns what the Go package pattern (from the module root) links, each package with
// the packages that import it there.
func deps(t *testing.T, pattern string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, pattern)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", pattern, err, stderr)
	}
	importers := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if _, ok := importers[f[0]]; !ok {
			importers[f[0]] = nil
		}
		for _, imp := range f[1:] {
			importers[imp] = append(importers[imp], f[0])
		}
	}
	return importers
}

// matching returns the packages of linked that are p or under it, sorted.
func matching(linked map[string][]string, p string) []string {
	var out []string
	for pkg := range linked {
		if under(pkg, p) {
			out = append(out, pkg)
		}
	}
	sort.Strings(out)
	return out
}

// The agent's binary links no simulator and no plotting; capstan-simulate, which has them,
// proves that the names above are the packages' real ones.
func TestAgentBinaryLinksNoSimulator(t *testing.T) {
	agent := deps(t, "./cmd/capstan")
	simulator := deps(t, "./cmd/capstan-simulate")
	for _, p := range notInTheAgent {
		if len(matching(simulator, p)) == 0 {
			t.Errorf("capstan-simulate links nothing of %s: is the name right?", p)
		}
		for _, pkg := range matching(agent, p) {
			// Name where the agent's own code reaches in; what it then pulls along follows.
			var from []string
			for _, by := range agent[pkg] {
				if !underAny(notInTheAgent, by) {
					from = append(from, by)
				}
			}
			if len(from) > 0 {
				t.Errorf("the agent (cmd/capstan) links %s, imported by %s", pkg, strings.Join(from, ", "))
			}
		}
	}
}

// underAny reports whether pkg is one of prefixes or under one.
func underAny(prefixes []string, pkg string) bool {
	for _, p := range prefixes {
		if under(pkg, p) {
			return true
		}
	}
	return false
}
