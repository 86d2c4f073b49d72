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
// tests' code. cgo is on, as go-nvml needs.
func MainWithBinary(m *testing.M, pkg, name string, path *string) {
	dir, err := os.MkdirTemp("", "capstan-"+name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "making a directory for %s: %v\n", name, err)
		os.Exit(1)
	}
	*path = filepath.Join(dir, name)
	build := exec.Command("go", "build", "-o", *path, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -Wno-deprecated-declarations")
	code := 1
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
	} else {
		code = m.Run()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}
