package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/metrics"
)

// goldenPoint is a point of `capstan collect --json` without its resource (host.id and
// service.version differ between machines; the test checks the resource separately).
type goldenPoint struct {
	Name       string            `json:"name"`
	Unit       string            `json:"unit"`
	Type       string            `json:"type"`
	Value      float64           `json:"value"`
	Attributes map[string]string `json:"attributes"`
}

// hostCollectors are the collectors whose output the golden files hold.
var hostCollectors = []string{"cpufreq", "thermal"}

// TestHostCollectorsGolden runs `capstan collect --json` on each fixture host and compares the
// host collectors' points with testdata/host/<host>.golden.json (go test -run HostCollectorsGolden
// -update rewrites them). It shows the first collection: RAPL power needs two readings, so no
// RAPL hw.power appears.
func TestHostCollectorsGolden(t *testing.T) {
	for _, host := range hostfixtures.Hosts {
		t.Run(host, func(t *testing.T) {
			out, errOut, code := runCapstan(t, "collect", "--json", "--gpu.backend=none", "--web.listen-address=",
				"--node.name=fixture-"+host,
				"--path.sysfs="+hostfixtures.Sysfs(host), "--path.procfs="+hostfixtures.Procfs(host))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var points []jsonPoint
			if err := json.Unmarshal([]byte(out), &points); err != nil {
				t.Fatalf("output is not the documented JSON array: %v", err)
			}
			got := hostPoints(t, host, points)
			checkLogs(t, host, errOut)

			if host == hostfixtures.Big {
				got = sampleBigHost(t, got)
			}
			data, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join("testdata", "host", host+".golden.json"), append(data, '\n'))
		})
	}
}

// hostPoints keeps the host collectors' points, checking each against the metric table and the
// resource on the way.
func hostPoints(t *testing.T, host string, points []jsonPoint) []goldenPoint {
	t.Helper()
	var out []goldenPoint
	up := map[string]float64{}
	for _, p := range points {
		d := metrics.ByName(p.Name)
		if d == nil {
			t.Errorf("%s is not in the metric table", p.Name)
			continue
		}
		if p.Resource["service.name"] != "capstan" || p.Resource["host.name"] != "fixture-"+host {
			t.Errorf("%s: resource %v", p.Name, p.Resource)
		}
		switch {
		case d == metrics.CollectorUp:
			up[p.Attributes[metrics.AttrCollector]] = p.Value
			if !slices.Contains(hostCollectors, p.Attributes[metrics.AttrCollector]) {
				continue
			}
		case d.From("agent"):
			continue // durations vary from run to run
		case !d.From("cpufreq") && !d.From("thermal"):
			continue
		}
		for k := range p.Attributes {
			if !slices.Contains(d.Attributes, k) {
				t.Errorf("%s carries attribute %q the table does not list", p.Name, k)
			}
		}
		out = append(out, goldenPoint{p.Name, p.Unit, p.Type, p.Value, p.Attributes})
	}
	for _, c := range hostCollectors {
		if up[c] != 1 {
			t.Errorf("collector %s up=%v on the %s fixture, want 1", c, up[c], host)
		}
	}
	return out
}

// checkLogs asserts the intel host's unreadable PSU sensor is said once, and nothing crashed.
func checkLogs(t *testing.T, host, errOut string) {
	t.Helper()
	if strings.Contains(errOut, "panic") || strings.Contains(errOut, "level=ERROR") {
		t.Errorf("errors in the log:\n%s", errOut)
	}
	want := 0
	if host == hostfixtures.Intel {
		want = 1 // dps460 temp3_input does not read
	}
	if n := strings.Count(errOut, "skipping a sensor while it fails to read"); n != want {
		t.Errorf("%d unreadable-sensor log lines, want %d:\n%s", n, want, errOut)
	}
}

// sampleBigHost checks the 192-CPU host is complete, then keeps a sample of its per-CPU and
// per-core points so the golden file stays reviewable.
func sampleBigHost(t *testing.T, points []goldenPoint) []goldenPoint {
	t.Helper()
	cpus := map[string]bool{}
	cores := 0
	keepCPU := map[string]bool{"0": true, "1": true, "95": true, "96": true, "191": true}
	var out []goldenPoint
	for _, p := range points {
		if n, ok := p.Attributes[metrics.AttrCPULogicalNumber]; ok {
			if p.Name == metrics.CPUFrequency.Name {
				cpus[n] = true
			}
			if !keepCPU[n] {
				continue
			}
		}
		if loc := p.Attributes[metrics.AttrSensorLocation]; strings.HasPrefix(loc, "Core ") {
			if p.Name == metrics.HWTemperature.Name {
				cores++
			}
			if loc != "Core 0" && loc != "Core 47" {
				continue
			}
		}
		out = append(out, p)
	}
	if len(cpus) != 192 {
		t.Errorf("system.cpu.frequency for %d CPUs, want 192", len(cpus))
	}
	if cores != 96 {
		t.Errorf("%d coretemp core temperatures, want 96", cores)
	}
	return out
}
