package main

import (
	"bytes"
	"os"
	"testing"
)

// The committed file is what the generator writes from the go-nvml in go.mod: a go-nvml
// upgrade that adds a method fails here (and at compile time) until `go generate` runs.
func TestGeneratedFileIsCurrent(t *testing.T) {
	want, err := Source()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../unmodelled_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("collectors/gpu/sim/unmodelled_gen.go is stale: run go generate ./collectors/gpu/sim")
	}
}
