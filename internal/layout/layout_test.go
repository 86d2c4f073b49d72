// Package layout checks that Capstan's imports point one way, as docs/architecture.md draws
// them: ground libraries, then the collector framework and the configuration schema, then the
// components (collectors, capping, exporters), then the agent's wiring, which only commands
// and tests import. Test-support packages are imported from tests alone.
package layout

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/capstan-power/capstan/"

// imports maps each package directory (relative to the module root) to the Capstan and
// third-party packages its non-test files import, and lists what its test files import apart.
type imports struct {
	prod map[string][]string
	test map[string][]string
	// commands are the directories of main packages (the agent, capstanctl, generators).
	commands map[string]bool
}

func readImports(t *testing.T, root string) imports {
	t.Helper()
	out := imports{prod: map[string][]string{}, test: map[string][]string{}, commands: map[string]bool{}}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "testdata", "bin", "dist", "node_modules", ".git":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		if f.Name.Name == "main" {
			out.commands[rel] = true
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasSuffix(path, "_test.go") {
				out.test[rel] = append(out.test[rel], p)
			} else {
				out.prod[rel] = append(out.prod[rel], p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// under reports whether pkg is dir or inside it.
func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// local turns an import path of this module into a directory; "" for other modules.
func local(p string) string {
	if !strings.HasPrefix(p, module) {
		return ""
	}
	return strings.TrimPrefix(p, module)
}

// layer numbers a Capstan package directory: an import may only point to a lower layer, or
// within its own component.
func layer(dir string) int {
	switch {
	case under(dir, "collectors/gpu/sim"):
		return 0 // simulated hardware behind the real NVML interface, like a device
	case under(dir, "internal/agent"), under(dir, "cmd"), isCommandLibrary(dir), dir == "internal/cli":
		return 4 // wiring and commands, and what the commands share on the command line
	case under(dir, "collectors") && dir != "collectors", under(dir, "capping"), under(dir, "exporters"):
		return 3 // components
	case dir == "internal/config":
		return 2 // the configuration schema, which reads the collector registry
	case dir == "collectors":
		return 1 // the collector framework
	default:
		return 0 // ground libraries, bpf objects, test support
	}
}

// commandLibraries hold a command's code outside its main package, for the tests of another
// command that runs it: internal/simcmd is capstan-simulate, which `capstan simulate` runs.
// They are commands in all but name (layer 4, and they may import the wiring).
var commandLibraries = []string{"internal/simcmd"}

func isCommandLibrary(dir string) bool {
	for _, c := range commandLibraries {
		if under(dir, c) {
			return true
		}
	}
	return false
}

// testSupport are imported by tests only (internal/soak is the soak harness, run by `make
// soak`: test support with a command of its own); they may import each other.
var testSupport = []string{"internal/testkit", "internal/etcdtest", "internal/testpki", "internal/otlptest", "internal/hostfixtures", "internal/soak"}

func isTestSupport(dir string) bool {
	for _, ts := range testSupport {
		if under(dir, ts) {
			return true
		}
	}
	return false
}

func TestImportsPointOneWay(t *testing.T) {
	all := readImports(t, "../..")
	var problems []string
	for dir, imps := range all.prod {
		for _, p := range imps {
			to := local(p)
			if to == "" {
				continue
			}
			for _, ts := range testSupport {
				if under(to, ts) && !isTestSupport(dir) {
					problems = append(problems, dir+" imports the test-support package "+to+" outside a test")
				}
			}
			from, into := layer(dir), layer(to)
			if all.commands[dir] {
				from = 4
			}
			sameComponent := strings.SplitN(dir, "/", 2)[0] == strings.SplitN(to, "/", 2)[0] && from == 3 && into == 3
			if into > from || into == from && from != 0 && !sameComponent && from != 4 {
				problems = append(problems, dir+" (layer "+strconv.Itoa(from)+") imports "+to+" (layer "+strconv.Itoa(into)+")")
			}
			if from == 3 && into == 3 && !sameComponent {
				problems = append(problems, dir+" imports another component, "+to)
			}
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

// The framework knows no source: go-nvml is the GPU collector's and the backends' business.
func TestFrameworkNamesNoSource(t *testing.T) {
	all := readImports(t, "../..")
	for _, p := range all.prod["collectors"] {
		if strings.Contains(p, "go-nvml") || strings.Contains(p, "cilium/ebpf") || strings.Contains(p, "netlink") {
			t.Errorf("collectors (the framework) imports %s", p)
		}
	}
}

// Nothing but commands, command libraries and tests imports the wiring.
func TestOnlyCommandsImportTheWiring(t *testing.T) {
	all := readImports(t, "../..")
	for dir, imps := range all.prod {
		for _, p := range imps {
			if to := local(p); under(to, "internal/agent") && !under(dir, "cmd") && !under(dir, "internal/agent") && !isCommandLibrary(dir) {
				t.Errorf("%s imports the agent's wiring %s", dir, to)
			}
		}
	}
}
