package exporters

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/sample"
)

// TestStdout checks the stdout exporter writes the store as JSON lines; with an interval far
// beyond the test, the only export is the one Shutdown makes.
func TestStdout(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", newFleet(1).batch(5000))
	cfg := testConfig()
	cfg.Stdout.Enabled = true
	cfg.Stdout.Interval = time.Hour
	var out bytes.Buffer
	e, err := New(context.Background(), Options{Config: cfg, Store: store, Stdout: &out, Version: "1.2.3-test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.Addr() != nil {
		t.Errorf("Addr() = %v without a web listen address, want nil", e.Addr())
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("stdout got %d lines, want 1 JSON document:\n%s", len(lines), out.String())
	}
	var doc struct {
		Resource     []struct{ Key string }
		ScopeMetrics []struct {
			Metrics []struct{ Name, Unit string }
		}
	}
	if err := json.Unmarshal([]byte(lines[0]), &doc); err != nil {
		t.Fatalf("stdout line is not JSON: %v\n%s", err, lines[0])
	}
	units := map[string]string{}
	for _, sm := range doc.ScopeMetrics {
		for _, m := range sm.Metrics {
			units[m.Name] = m.Unit
		}
	}
	if units["hw.power"] != "W" || units["hw.energy"] != "J" {
		t.Errorf("stdout metrics %v, want hw.power in W and hw.energy in J", units)
	}
	if !strings.Contains(lines[0], `"service.name"`) {
		t.Errorf("stdout output lacks the resource: %s", lines[0])
	}
}
