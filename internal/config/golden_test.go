package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

var update = flag.Bool("update", false, "rewrite testdata/errors/*.golden from the current messages")

// resolveArgs runs the command-line path: bind flags to a Default config, parse args, Resolve.
func resolveArgs(args ...string) (*Config, error) {
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	fs.SetOutput(discard{})
	flags := Default()
	BindFlags(fs, flags)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return Resolve(fs, flags)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestErrorMessages checks each testdata/errors case against its golden message. A case is
// NAME.golden with either NAME.flags (the command line) or NAME.yaml (loaded as --config.file).
func TestErrorMessages(t *testing.T) {
	dir := filepath.Join("testdata", "errors")
	goldens, err := filepath.Glob(filepath.Join(dir, "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	inputs, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	flagFiles, err := filepath.Glob(filepath.Join(dir, "*.flags"))
	if err != nil {
		t.Fatal(err)
	}
	if !*update {
		// Every input needs a golden, or a new case would silently test nothing.
		for _, in := range append(inputs, flagFiles...) {
			golden := strings.TrimSuffix(in, filepath.Ext(in)) + ".golden"
			if _, err := os.Stat(golden); err != nil {
				t.Errorf("%s has no golden file; run go test -run TestErrorMessages -update", in)
			}
		}
	} else {
		goldens = nil
		for _, in := range append(inputs, flagFiles...) {
			goldens = append(goldens, strings.TrimSuffix(in, filepath.Ext(in))+".golden")
		}
	}
	seen := map[string]bool{}
	for _, golden := range goldens {
		base := strings.TrimSuffix(golden, ".golden")
		if seen[base] {
			continue
		}
		seen[base] = true
		t.Run(filepath.Base(base), func(t *testing.T) {
			args := []string{"--config.file=" + base + ".yaml"}
			if b, err := os.ReadFile(base + ".flags"); err == nil {
				args = strings.Fields(string(b))
			}
			_, err := resolveArgs(args...)
			if err == nil {
				t.Fatalf("%v: no error", args)
			}
			got := err.Error()
			if strings.ContainsAny(got, "\n\r") {
				t.Errorf("message spans lines: %q", got)
			}
			var cfgErr *Error
			isFlagParse := strings.HasPrefix(got, "invalid argument")
			if !isFlagParse && !errors.As(err, &cfgErr) {
				t.Errorf("error %T is not a *config.Error: %v", err, err)
			}
			if *update {
				if err := os.WriteFile(golden, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != strings.TrimSuffix(string(want), "\n") {
				t.Errorf("message:\n got: %s\nwant: %s", got, want)
			}
		})
	}
}
