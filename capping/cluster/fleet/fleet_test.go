package fleet

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/capstan-power/capstan/capping"
)

// Bad fleet files are refused with the file, the line and the key.
func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"domains:\n  site: {limit_w: 100, nodes: 1, color: red}\n", "f.yaml: yaml: unmarshal errors:\n  line 2: field color not found"},
		{"domains:\n  site: {limit_w: 1000}\n  site/a/b: {limit_w: 100, nodes: 1}\n", "f.yaml:3: domains.site/a/b: its parent site/a is not in the file"},
		{"domains:\n  site: {limit_w: 1000}\n  site/a: {limit_w: 100, nodes: 1}\n  site/a/b: {limit_w: 100, nodes: 1}\n", "f.yaml:3: domains.site/a.nodes: only a leaf domain holds nodes"},
		{"domains:\n  site: {limit_w: 0, nodes: 1}\n", "f.yaml:2: domains.site.limit_w: 0 out of range"},
		{"domains:\n  site: {limit_w: 1000, nodes: 1, model: Z80}\n", `f.yaml:2: domains.site.model: unknown GPU model "Z80"`},
		{"domains:\n  site: {limit_w: 1000, nodes: 1, trace: jazz}\n", "f.yaml:2: domains.site.trace:"},
		{"domains:\n  site: {limit_w: 1000, nodes: 1, gpus: 65}\n", "f.yaml:2: domains.site.gpus: 65 out of range (allowed: 1 to 64)"},
		{"domains:\n  a: {limit_w: 1000, nodes: 1}\n  b: {limit_w: 1000, nodes: 1}\n", "want one root domain (a path of one segment, the group), found 2: a, b"},
		{"domains:\n  site: {limit_w: 1000}\n  site//r: {limit_w: 100, nodes: 1}\n", "f.yaml:3: domains.site//r: not a domain path: segment 2 is empty"},
		{"domains:\n  site: {limit_w: 1000}\n", "0 nodes in all"},
		{"domains:\n  site: {limit_w: 1000, gpus: 4}\n", "gpus, model and trace describe nodes; set nodes too"},
	} {
		_, err := Parse("f.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want an error with %q", tc.yaml, err, tc.want)
		}
	}
}

func settings() capping.Settings {
	s := capping.Defaults()
	s.Period = time.Second
	return s
}

// Whatever the traces, GPU counts, models and seeds, no domain is over its limit once the
// controllers started, and the throughput figures are shares of what uncapped GPUs do.
func TestRunKeepsEveryLimit(t *testing.T) {
	for i, v := range []struct {
		trace, model string
		gpus         int
	}{
		{"inference", "H100", 8}, {"training", "H100", 4}, {"bursty", "A100", 2}, {"steady", "B200", 2}, {"imbalanced", "H200", 4},
	} {
		maxW := map[string]float64{"H100": 700, "H200": 700, "A100": 400, "B200": 1000}[v.model]
		node := maxW * float64(v.gpus)
		// Racks that fit 3 and 2 nodes at nameplate hold 4 and 3; the row and the site bind too.
		f, err := Parse("f.yaml", fmt.Appendf(nil, `
domains:
  site: {limit_w: %g}
  site/row: {limit_w: %g, guard_band: 0.05}
  site/row/a: {limit_w: %g, nodes: 4, gpus: %d, model: %s, trace: %s, offset: 7m}
  site/row/b: {limit_w: %g, nodes: 3, gpus: %d, model: %s, trace: %s}
  site/c: {limit_w: %g, nodes: 2, gpus: %d, model: %s, trace: %s}
`, 7.5*node, 5*node, 3*node, v.gpus, v.model, v.trace, 2*node, v.gpus, v.model, v.trace, 2*node, v.gpus, v.model, v.trace))
		if err != nil {
			t.Fatal(err)
		}
		r, err := Run(Options{File: f, Duration: 5 * time.Minute, Settings: settings(), Seed: int64(i), Baselines: true, StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range r.Domains {
			if d.TimeOverLimitPct != 0 || d.DrawMaxW > d.LimitW {
				t.Errorf("%s: domain %s over its limit %.0f W: %.2f %% of the time, at most %.0f W", v.trace, d.Path, d.LimitW, d.TimeOverLimitPct, d.DrawMaxW)
			}
		}
		for _, j := range r.Jobs {
			if !(j.ThroughputVsUncappedPct > 0 && j.ThroughputVsUncappedPct <= 100.5) || !(j.ThroughputVsStaticPct > 0) {
				t.Errorf("%s: job %s throughput %.1f %% of uncapped, %.1f %% of static", v.trace, j.Domain, j.ThroughputVsUncappedPct, j.ThroughputVsStaticPct)
			}
		}
		if r.Nodes != 9 || r.GPUs != 9*v.gpus || r.Periods != 300 || r.GrantWrites == 0 || r.RecordWrites == 0 {
			t.Errorf("%s: report %d nodes, %d GPUs, %d periods, %d grant and %d record writes", v.trace, r.Nodes, r.GPUs, r.Periods, r.GrantWrites, r.RecordWrites)
		}
	}
}

// The same seed gives the same report: the clock is simulated and nothing depends on the
// machine's timing.
func TestRunRepeats(t *testing.T) {
	f, err := Parse("f.yaml", []byte("domains:\n  site: {limit_w: 9000, nodes: 3, gpus: 4, trace: training, offset: 1m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var reps [2]*Report
	for i := range reps {
		reps[i], err = Run(Options{File: f, Duration: 3 * time.Minute, Settings: settings(), Seed: 5, StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		reps[i].Wall = 0
	}
	if !reflect.DeepEqual(reps[0], reps[1]) {
		t.Errorf("two runs of one seed differ:\n%+v\n%+v", reps[0], reps[1])
	}
}

// The search answers per leaf: at least one node more than the nameplate count on an
// inference rack whose GPUs rarely draw their maximum, none on a rack of GPUs that always do.
func TestSearchDirection(t *testing.T) {
	f, err := Parse("f.yaml", []byte(`
domains:
  site: {limit_w: 100000}
  site/infer: {limit_w: 16800, nodes: 3, gpus: 8, trace: inference, offset: 20m}
  site/steady: {limit_w: 16800, nodes: 3, gpus: 8, trace: steady}
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Search(Options{File: f, Settings: settings(), StateDir: t.TempDir()}, SearchOptions{MaxLossPct: 1, Duration: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if len(res) != 2 || res[0].Path != "site/infer" || res[0].NameplateNodes != 3 || res[1].NameplateNodes != 3 {
		t.Fatalf("search answered %+v; want site/infer and site/steady, 3 nodes at nameplate each", res)
	}
	if res[0].MaxNodes <= res[0].NameplateNodes || res[0].ThroughputLossPct > 1 || res[0].TimeOverLimitPct != 0 {
		t.Errorf("inference rack: %+v; want more than its 3 nameplate nodes at ≤ 1 %% loss", res[0])
	}
	if res[1].MaxNodes > res[1].NameplateNodes {
		t.Errorf("steady rack at full power: %+v; want no node beyond the nameplate count", res[1])
	}
}

// Above the leaves, a row whose limit is below what its racks hold alone holds fewer nodes
// than their sum, and none of its domains is over its limit at that count.
func TestSearchLevels(t *testing.T) {
	f, err := Parse("f.yaml", []byte(`
domains:
  site: {limit_w: 100000}
  site/row: {limit_w: 22000}
  site/row/a: {limit_w: 16800, nodes: 3, gpus: 8, trace: steady}
  site/row/b: {limit_w: 16800, nodes: 3, gpus: 8, trace: steady}
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Search(Options{File: f, Settings: settings(), StateDir: t.TempDir()}, SearchOptions{MaxLossPct: 1, Duration: 5 * time.Minute, Levels: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	by := map[string]Oversubscription{}
	for _, r := range res {
		by[r.Path] = r
	}
	a, b, row := by["site/row/a"], by["site/row/b"], by["site/row"]
	if len(res) != 4 || a.MaxNodes == 0 || row.Runs == 0 || row.NameplateNodes != 3 {
		t.Fatalf("search answered %+v", res)
	}
	if row.MaxNodes >= a.MaxNodes+b.MaxNodes || row.TimeOverLimitPct != 0 || row.ThroughputLossPct > 1 {
		t.Errorf("row: %+v; want fewer nodes than its racks' %d + %d, none over a limit, ≤ 1 %% loss", row, a.MaxNodes, b.MaxNodes)
	}
}
