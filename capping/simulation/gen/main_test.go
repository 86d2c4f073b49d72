package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The committed pictures are what the simulator draws now: a change to the controller, the
// simulated fleet or the plots that moves them needs `make docs`.
func TestPicturesAreCurrent(t *testing.T) {
	for name, draw := range pictures {
		got, err := draw()
		if err != nil {
			t.Fatalf("drawing %s: %v", name, err)
		}
		want, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", name))
		if err != nil {
			t.Fatalf("reading docs/%s: %v (run make docs)", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("docs/%s differs from what the simulator draws: run `make docs` and commit the result", name)
		}
		if len(got) > 150<<10 {
			t.Errorf("docs/%s is %d KB, want under 150 KB", name, len(got)>>10)
		}
	}
}

// Two runs draw the same bytes: the pictures can be checked at all.
func TestPicturesAreDeterministic(t *testing.T) {
	a, err := budgetStep()
	if err != nil {
		t.Fatal(err)
	}
	b, err := budgetStep()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("two draws of the same run differ")
	}
}
