package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCSVTrace checks interpolation between rows, round-robin columns and looping, against
// testdata/sample.csv (rows at 0, 10 and 20 s for gpu0 and gpu1).
func TestCSVTrace(t *testing.T) {
	m, _ := LookupModel("H100")
	tr, err := NewTrace("testdata/sample.csv", m, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		gpu   int
		at    time.Duration
		wantW float64
	}{
		{0, 0, 200},
		{0, 5 * time.Second, 300}, // halfway from 200 to 400
		{0, 10 * time.Second, 400},
		{0, 15 * time.Second, 350},
		{1, 15 * time.Second, 250},
		{2, 5 * time.Second, 300},  // a third GPU reuses gpu0
		{0, 25 * time.Second, 300}, // 5 s into the second loop
		{1, 20 * time.Second, 100}, // the last row itself
		{1, 40*time.Second + 2500*time.Millisecond, 400},
		{0, -time.Second, 200}, // before the first row: its value
	}
	for _, tt := range tests {
		if got := tr.Demand(tt.gpu, tt.at); got != tt.wantW {
			t.Errorf("gpu%d at %v: %.2f W, want %.2f", tt.gpu, tt.at, got, tt.wantW)
		}
	}
}

// TestCSVTraceRefusesMalformedFiles checks each malformed file is refused with its name, the
// line and what is wrong.
func TestCSVTraceRefusesMalformedFiles(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string
	}{
		{"empty", "", []string{"bad header", "empty"}},
		{"no gpu column", "time_s\n0\n1\n", []string{"line 1", "bad header", "at least one gpuN column"}},
		{"wrong first column", "t,gpu0\n0,100\n1,100\n", []string{"line 1", "bad header", `"t"`, "time_s"}},
		{"gpu columns out of order", "time_s,gpu1,gpu0\n0,1,2\n1,1,2\n", []string{"line 1", "bad header", `column 2 is "gpu1", want gpu0`}},
		{"non-numeric watts", "time_s,gpu0,gpu1\n0,100,100\n1,100,lots\n", []string{"line 3", `gpu1 value "lots" is not a number`}},
		{"non-numeric time", "time_s,gpu0\n0,100\nsoon,100\n", []string{"line 3", `time_s value "soon" is not a number`}},
		{"not finite", "time_s,gpu0\n0,100\n1,NaN\n", []string{"line 3", `"NaN" is not a number`}},
		{"time not increasing", "time_s,gpu0\n0,100\n5,100\n5,200\n", []string{"line 4", "time_s 5 is not after the previous row's 5"}},
		{"time going back", "# comment\ntime_s,gpu0\n0,100\n5,100\n3,200\n", []string{"line 5", "time_s 3 is not after"}},
		{"negative time", "time_s,gpu0\n-1,100\n5,100\n", []string{"line 2", "time_s -1 is negative"}},
		{"negative watts", "time_s,gpu0\n0,100\n1,-20\n", []string{"line 3", "gpu0 is -20 W", "negative"}},
		{"short row", "time_s,gpu0,gpu1\n0,100,100\n1,100\n", []string{"line 3", "2 values", "3 columns"}},
		{"one row", "time_s,gpu0\n0,100\n", []string{"too few rows", "found 1", "at least 2"}},
		{"header only", "time_s,gpu0\n", []string{"too few rows", "found 0"}},
		{"broken quoting", "time_s,gpu0\n0,100\n1,\"10\"0\n", []string{"line 3"}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".csv")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			m, _ := LookupModel("A100")
			_, err := NewTrace(path, m, 2, 0)
			if err == nil {
				t.Fatal("the file was accepted")
			}
			for _, w := range append(tt.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
