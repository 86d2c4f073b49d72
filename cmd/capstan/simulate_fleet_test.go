package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The form to keep working: simulate fleet --fleet.file=F --duration=... --capping.period=1s
// --json prints every domain, job and leaf's oversubscription with the fields scripts read.
func TestSimulateFleetJSON(t *testing.T) {
	file := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte(`domains:
  site: {limit_w: 3600000}
  site/infer: {limit_w: 1800000}
  site/infer/rack1: {limit_w: 16800, nodes: 3, gpus: 8, model: H100, trace: inference}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, errOut, code := runCapstan(t, "simulate", "fleet", "--fleet.file="+file, "--duration=3m", "--capping.period=1s", "--json",
		"--plot="+filepath.Join(dir, "domains.png"), "--fleet.search-plot="+filepath.Join(dir, "search.png"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, png := range []string{"domains.png", "search.png"} {
		if b, err := os.ReadFile(filepath.Join(dir, png)); err != nil || !strings.HasPrefix(string(b), "\x89PNG") || len(b) < 10000 {
			t.Errorf("%s: %d bytes, %v; want a PNG", png, len(b), err)
		}
	}
	var r struct {
		Nodes            int              `json:"nodes"`
		Domains          []map[string]any `json:"domains"`
		Jobs             []map[string]any `json:"jobs"`
		Oversubscription []map[string]any `json:"oversubscription"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if r.Nodes != 3 || len(r.Domains) != 3 || len(r.Jobs) != 1 || len(r.Oversubscription) != 1 {
		t.Fatalf("want 3 nodes, 3 domains, 1 job, 1 leaf searched:\n%s", out)
	}
	for _, k := range []string{"path", "limit_w", "time_over_limit_pct", "max_overshoot_pct", "draw_p50_w", "draw_p95_w", "draw_p99_w"} {
		if _, ok := r.Domains[2][k]; !ok {
			t.Errorf("domains[] lacks %q", k)
		}
	}
	for _, k := range []string{"path", "nameplate_nodes", "max_nodes", "throughput_loss_pct", "trials"} {
		if _, ok := r.Oversubscription[0][k]; !ok {
			t.Errorf("oversubscription[] lacks %q", k)
		}
	}
	if r.Domains[2]["path"] != "site/infer/rack1" || r.Oversubscription[0]["nameplate_nodes"] != 3.0 {
		t.Errorf("rack1: %v, %v", r.Domains[2], r.Oversubscription[0])
	}
}

// A bad fleet file or flag is refused with the file, the line and the key.
func TestSimulateFleetRefuses(t *testing.T) {
	file := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte("domains:\n  site: {limit_w: 1000}\n  site/r: {limit_w: -1, nodes: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"simulate", "fleet", "--duration=1m"}, "--fleet.file: required"},
		{[]string{"simulate", "fleet", "--fleet.file=" + file}, "fleet.yaml:3: domains.site/r.limit_w: -1 out of range"},
		{[]string{"simulate", "fleet", "--fleet.file=" + file, "--fleet.max-loss-pct=200"}, "--fleet.max-loss-pct: 200 is out of range"},
		{[]string{"simulate", "fleet", "--fleet.file=/nonexistent.yaml"}, "reading the fleet file"},
	} {
		_, errOut, code := runCapstan(t, tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("capstan %s: exit %d, %q; want an error with %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}
