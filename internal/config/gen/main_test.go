package main

import (
	"os"
	"testing"
)

func TestReferenceIsCurrent(t *testing.T) {
	got, err := os.ReadFile("../../../docs/configuration.md")
	if err != nil {
		t.Fatalf("reading docs/configuration.md: %v (run make generate)", err)
	}
	if string(got) != reference() {
		t.Fatal("docs/configuration.md differs from the configuration's declarations: run `make generate` and commit the result")
	}
}
