package main

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/internal/simcmd"
)

// The README is what a new user follows from a fresh clone: its Go version is go.mod's, its
// capstan commands run as written from the checkout (bin/capstan, with subcommands and flags
// that exist), every flag it names exists, and every file it links to is there.
func TestReadme(t *testing.T) {
	readme := mustReadFile(t, "../../README.md")

	goMod := mustReadFile(t, "../../go.mod")
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(goMod)
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	if !strings.Contains(readme, "Go "+goVersion[1]+" or later") {
		t.Errorf("the README does not ask for Go %s or later, the version go.mod requires", goVersion[1])
	}

	root := newRootCommand(io.Discard, io.Discard)
	// capstan simulate hands its arguments to capstan-simulate, which parses them: a README line
	// `bin/capstan simulate …` is checked against the simulator's commands and flags.
	simulator := simcmd.NewRootCommand(io.Discard, io.Discard)
	for _, line := range shellLines(readme) {
		words := strings.Fields(line)
		switch words[0] {
		case "capstan", "capstanctl", "capstan-simulate":
			t.Errorf("README command %q: a checkout has bin/%s (make build), not %s on the PATH", line, words[0], words[0])
		case "bin/capstan":
			if cmd, _, err := root.Find(words[1:]); err == nil && cmd.Name() == "simulate" {
				checkCommandLine(t, simulator, line, words[1:])
				continue
			}
			checkCommandLine(t, root, line, words[1:])
		case "bin/capstan-simulate":
			checkCommandLine(t, simulator, line, append([]string{"simulate"}, words[1:]...))
		}
	}

	known := map[string]bool{
		// capstanctl's own flags, which this binary lacks.
		"reason": true,
	}
	for _, r := range []*cobra.Command{root, simulator} {
		walkCommands(r, func(c *cobra.Command) {
			for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
				fs.VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
			}
		})
	}
	for _, m := range regexp.MustCompile("`[^`]*`").FindAllString(readme, -1) {
		for _, flag := range regexp.MustCompile(`(?:^|[\s\x60])--([a-z][a-z0-9.<>-]*)`).FindAllStringSubmatch(m, -1) {
			name := strings.ReplaceAll(flag[1], "<name>", "gpu")
			name = strings.TrimPrefix(name, "no-")
			if !known[name] {
				t.Errorf("the README names --%s, which no capstan command has", flag[1])
			}
		}
	}

	// The picture under the simulate example is what that example draws: make docs runs it.
	makefile := strings.ReplaceAll(mustReadFile(t, "../../Makefile"), "\\\n", " ")
	recipe := regexp.MustCompile(`(?m)^\t\$\(GO\) run \./cmd/capstan-simulate (.*--plot docs/simulate\.png)`).FindStringSubmatch(makefile)
	if recipe == nil {
		t.Fatal("the Makefile's docs target does not draw docs/simulate.png with capstan-simulate")
	}
	var example string
	for _, line := range shellLines(readme) {
		if strings.HasPrefix(line, "bin/capstan simulate ") {
			example = strings.TrimPrefix(line, "bin/capstan ")
		}
	}
	if withoutPlot(example) != withoutPlot("simulate "+recipe[1]) {
		t.Errorf("the README's simulate example %q is not what make docs draws docs/simulate.png with: %q", example, recipe[1])
	}

	for _, link := range regexp.MustCompile(`\]\(([^)#:]+)\)`).FindAllStringSubmatch(readme, -1) {
		if _, err := os.Stat(filepath.Join("../..", link[1])); err != nil {
			t.Errorf("the README links to %s: %v", link[1], err)
		}
	}
}

// shellLines returns the commands of the README's sh blocks, without comments; an optional
// argument in brackets ([--json]) is given.
func shellLines(readme string) []string {
	var lines []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(readme, -1) {
		for _, line := range strings.Split(block[1], "\n") {
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			line = strings.NewReplacer("[", "", "]", "").Replace(strings.TrimSpace(line))
			if line != "" {
				lines = append(lines, line)
			}
		}
	}
	return lines
}

// checkCommandLine finds the command args name and parses its flags, without running it.
func checkCommandLine(t *testing.T, root *cobra.Command, line string, args []string) {
	t.Helper()
	cmd, rest, err := root.Find(args)
	if err != nil {
		t.Errorf("README command %q: %v", line, err)
		return
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("README command %q: %v", line, err)
		return
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Errorf("README command %q: %v", line, err)
	}
	for _, arg := range cmd.Flags().Args() {
		if _, err := os.Stat(filepath.Join("../..", arg)); err != nil && strings.Contains(arg, "/") {
			t.Errorf("README command %q names %s, which a checkout lacks: %v", line, arg, err)
		}
	}
}

// withoutPlot returns a command line's words, sorted, without --plot and its file.
func withoutPlot(line string) string {
	var words []string
	fields := strings.Fields(line)
	for i := 0; i < len(fields); i++ {
		if fields[i] == "--plot" {
			i++
			continue
		}
		words = append(words, fields[i])
	}
	sort.Strings(words)
	return strings.Join(words, " ")
}

func walkCommands(c *cobra.Command, visit func(*cobra.Command)) {
	visit(c)
	for _, sub := range c.Commands() {
		walkCommands(sub, visit)
	}
}

func mustReadFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
