package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	yaml "gopkg.in/yaml.v3"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// The rules Prometheus evaluates in a soak are the shipped ones with every `for:` scaled and
// nothing else changed; promtool accepts them.
func TestScaleRules(t *testing.T) {
	src := "../../deploy/prometheus/capstan-rules.yaml"
	dst := filepath.Join(t.TempDir(), "rules.yaml")
	scaled, err := scaleRules(src, dst, 0.1, MinAlertFor)
	if err != nil {
		t.Fatal(err)
	}
	if scaled["CapstanCollectorDown"] != "5m → 30s" || scaled["CapstanAgentDown"] != "2m → 15s" {
		t.Errorf("scaled %v", scaled)
	}
	type rule struct {
		Alert string            `yaml:"alert"`
		Expr  string            `yaml:"expr"`
		For   string            `yaml:"for"`
		Label map[string]string `yaml:"labels"`
	}
	read := func(path string) map[string]rule {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Groups []struct {
				Rules []rule `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		m := map[string]rule{}
		for _, g := range doc.Groups {
			for _, r := range g.Rules {
				m[r.Alert] = r
			}
		}
		return m
	}
	orig, got := read(src), read(dst)
	if len(orig) == 0 || len(got) != len(orig) {
		t.Fatalf("%d rules scaled from %d", len(got), len(orig))
	}
	for name, o := range orig {
		g := got[name]
		if g.Expr != o.Expr || g.Label["severity"] != o.Label["severity"] {
			t.Errorf("%s: expression or labels changed", name)
		}
		if o.For == "" {
			if g.For != "" {
				t.Errorf("%s: a for: appeared", name)
			}
			continue
		}
		od, _ := model.ParseDuration(o.For)
		gd, _ := model.ParseDuration(g.For)
		want := max(time.Duration(od)/10, MinAlertFor)
		if time.Duration(gd) != want {
			t.Errorf("%s: for %s scaled to %s, want %v", name, o.For, g.For, want)
		}
	}
	promtool := "../../bin/tools/promtool"
	if _, err := os.Stat(promtool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is missing: make promtool")
		}
		t.Skip("promtool not built (make promtool); the scaled rules were not checked by it")
	}
	if out, err := exec.Command(promtool, "check", "rules", dst).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the scaled rules: %v\n%s", err, out)
	}
}

// The fault file is what the sim's contract reads: one object with a list of faults, written
// by rename so that the sim never reads half a file, and no key the contract does not know.
func TestFaultFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "faults.json")
	f, err := newFaultFile(path)
	if err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	hang, err := f.add(simFault{Kind: "hang", GPU: -1, Calls: []string{"*"}, Duration: "30s"}, until)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.add(simFault{Kind: "set-limit", GPU: 1, LimitMW: 700000}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	type contract struct {
		Faults []struct {
			ID       string   `json:"id"`
			Kind     string   `json:"kind"`
			GPU      int      `json:"gpu"`
			Calls    []string `json:"calls"`
			Code     string   `json:"code"`
			Duration string   `json:"duration"`
			Until    string   `json:"until"`
			LimitMW  int64    `json:"limit_mw"`
		} `json:"faults"`
	}
	read := func() contract {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		var c contract
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("the fault file does not follow the contract: %v\n%s", err, raw)
		}
		return c
	}
	c := read()
	if len(c.Faults) != 2 || c.Faults[0].Until != "2026-12-06T05:00:00Z" || c.Faults[0].Duration != "30s" ||
		c.Faults[1].Until != "" || c.Faults[1].LimitMW != 700000 || c.Faults[0].ID == c.Faults[1].ID {
		t.Fatalf("fault file %+v", c)
	}
	if err := f.remove(hang); err != nil {
		t.Fatal(err)
	}
	if c = read(); len(c.Faults) != 1 || c.Faults[0].Kind != "set-limit" {
		t.Errorf("after removing the hang: %+v", c)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".faults-") {
			t.Errorf("temporary file %s left beside the fault file", e.Name())
		}
	}
}

func TestGrowth(t *testing.T) {
	samples := func(values []float64, steady func(i int) bool) []procStat {
		var out []procStat
		for i, v := range values {
			out = append(out, procStat{Goroutines: int(v), RSSBytes: int64(v), Steady: steady(i)})
		}
		return out
	}
	all := func(int) bool { return true }
	flat := []float64{70, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76, 76}
	goroutines := func(s procStat) float64 { return float64(s.Goroutines) }
	if g := growth(samples(flat, all), goroutines, true); g != 0 {
		t.Errorf("flat: %v", g)
	}
	// An etcd outage in the second quarter lowers the count there; its samples are not steady.
	dip := append([]float64(nil), flat...)
	for i := 4; i < 8; i++ {
		dip[i] = 60
	}
	notDip := func(i int) bool { return i < 4 || i >= 8 }
	if g := growth(samples(dip, notDip), goroutines, true); g != 0 {
		t.Errorf("a dip outside steady samples: %v", g)
	}
	if g := growth(samples(dip, all), goroutines, false); g < 0.2 {
		t.Errorf("without steadiness the dip shows: %v", g)
	}
	leak := make([]float64, 16)
	for i := range leak {
		leak[i] = 70 + 2*float64(i)
	}
	if g := growth(samples(leak, all), goroutines, true); g <= Growth {
		t.Errorf("a leak of 2 per sample grew only %v", g)
	}
}

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 9, 8, 7, 6, 10}
	if p := percentile(v, 0.5); p != 5 {
		t.Errorf("median %v", p)
	}
	if p := percentile(v, 0.99); p != 10 {
		t.Errorf("p99 %v", p)
	}
	if p := percentile(nil, 0.99); p != 0 {
		t.Errorf("p99 of nothing %v", p)
	}
}

// A crashed agent's successor is checked strictly on a node with its own budget (a restore
// brings every original back, so restore and adopt look different): anything but what
// capping.after-crash says is a violation there; on a node of the group, "indistinguishable"
// passes.
func TestSuccessorStrictWithOwnBudget(t *testing.T) {
	for _, c := range []struct {
		file, crash string
		got         devstate.SuccessorResult
		violation   bool
	}{
		{"", "restore", devstate.SuccessorSame, false},
		{"", "restore", devstate.SuccessorAdopted, true},
		{"", "adopt", devstate.SuccessorSame, false},
		{"budget.yaml", "restore", devstate.SuccessorRestored, false},
		{"budget.yaml", "restore", devstate.SuccessorSame, true},
		{"budget.yaml", "restore", devstate.SuccessorOther, true},
		{"budget.yaml", "adopt", devstate.SuccessorAdopted, false},
		{"budget.yaml", "adopt", devstate.SuccessorSame, true},
	} {
		h := &harness{check: devstate.NewChecker(time.Second, time.Now())}
		h.successor(&agent{h: h, name: "node-2", crash: c.crash, budgetFile: c.file}, c.got, "")
		if got := h.check.Counts()[devstate.KindSuccessor] > 0; got != c.violation {
			t.Errorf("own budget %q, after-crash %s, seen %s: violation %v, want %v", c.file, c.crash, c.got, got, c.violation)
		}
	}
}

// A kind with a first-node preference goes there on its first injection, whatever the seed;
// later injections are drawn from every eligible node.
func TestSchedulerFirstNode(t *testing.T) {
	for seed := range uint64(20) {
		h := &harness{rng: rand.New(rand.NewPCG(seed, seed))}
		s := &scheduler{h: h, locks: map[string]*sync.Mutex{}, picked: map[string]int{}}
		for _, n := range []string{"node-1", "node-2", "node-3"} {
			a := &agent{h: h, name: n}
			a.proc = &process{done: make(chan struct{})} // running
			h.agents = append(h.agents, a)
			s.locks["node:"+n] = &sync.Mutex{}
		}
		k := faultKind{name: "agent.sigkill-mid-write", domain: "node", first: func(a *agent) bool { return a.name == "node-2" }}
		a, l := s.nodeFor(context.Background(), k, time.Now().Add(time.Minute))
		if a == nil || a.name != "node-2" {
			t.Fatalf("seed %d: first injection on %v, want node-2", seed, a)
		}
		l.Unlock()
		seen := map[string]bool{}
		for range 30 {
			a, l := s.nodeFor(context.Background(), k, time.Now().Add(time.Minute))
			seen[a.name] = true
			l.Unlock()
		}
		if len(seen) != 3 {
			t.Fatalf("seed %d: later injections only on %v", seed, seen)
		}
	}
}
