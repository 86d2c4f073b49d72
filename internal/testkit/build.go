package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// MainWithBinary is the whole TestMain of a package whose tests run a binary as a process: it
// builds the Go package pkg (as go build names it, from the test's directory) into a temporary
// directory, sets *path to the binary, runs the tests, removes the directory and exits with the
// tests' code. cgo is on, as go-nvml needs. Each of siblings, a package too, is built into the
// same directory under its directory's name: a binary that runs another from beside itself
// (capstan runs capstan-simulate for `capstan simulate`) finds it there.
func MainWithBinary(m *testing.M, pkg, name string, path *string, siblings ...string) {
	dir, err := os.MkdirTemp("", "capstan-"+name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "making a directory for %s: %v\n", name, err)
		os.Exit(1)
	}
	*path = filepath.Join(dir, name)
	code := 1
	if err := build(pkg, *path); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else if err := buildSiblings(dir, siblings); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func buildSiblings(dir string, siblings []string) error {
	for _, pkg := range siblings {
		if err := build(pkg, filepath.Join(dir, filepath.Base(pkg))); err != nil {
			return err
		}
	}
	return nil
}

// build builds the Go package pkg into the binary out, with cgo on.
func build(pkg, out string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -Wno-deprecated-declarations")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w\n%s", pkg, err, b)
	}
	return nil
}
