package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse. Whatever the input: no panic; an error is a *Error
// with a one-line message; a config that parses either validates or fails with a *Error; and a
// valid config survives YAML() and Parse unchanged. Seeds: testdata/fuzz/FuzzParse, the
// documented example and every error case.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "errors", "*.yaml"))
	for _, path := range append(seeds, examplePath) {
		if data, err := os.ReadFile(path); err == nil { // directory.yaml is a directory
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			checkError(t, err)
			return
		}
		if err := cfg.Validate(); err != nil {
			checkError(t, err)
			return
		}
		out, err := cfg.YAML()
		if err != nil {
			t.Fatalf("YAML() of a valid config: %v", err)
		}
		back, err := Parse("effective.yaml", out)
		if err != nil {
			t.Fatalf("Parse(YAML()): %v\n%s", err, out)
		}
		if !sameConfig(back, cfg) {
			t.Fatalf("Parse(YAML()) =\n%+v\nwant\n%+v\nYAML:\n%s", back, cfg, out)
		}
	})
}

// checkError asserts what every configuration error promises.
func checkError(t *testing.T, err error) {
	t.Helper()
	var cfgErr *Error
	if !errors.As(err, &cfgErr) {
		t.Fatalf("%T is not a *config.Error: %v", err, err)
	}
	msg := err.Error()
	switch {
	case cfgErr.Problem == "" || msg == "":
		t.Fatalf("empty problem: %+v", cfgErr)
	case cfgErr.Line < 0:
		t.Fatalf("line %d: %s", cfgErr.Line, msg)
	case strings.ContainsAny(msg, "\r\n"):
		t.Fatalf("message spans lines: %q", msg)
	case strings.Contains(msg, internalError):
		t.Fatalf("recovered a panic: %s", msg)
	}
}
