// Package fleet simulates a fleet of nodes attached to a power domain tree on a simulated clock:
// every node runs its simulated GPUs (collectors/gpu/sim), the real capping controller and the
// real cluster member logic, and one allocator's rounds (the same plan as in etcd) share the
// tree's limits. It answers what a datacenter operator asks before adding servers to a row:
// would the domains stay within their limits, what would the jobs lose, and how many nodes
// could each domain hold.
package fleet

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// MaxNodes bounds a fleet file's nodes: a simulation of more would not fit a machine.
const MaxNodes = 20000

// Domain is one domain of a fleet file: its limit and, for a leaf, the nodes it holds.
type Domain struct {
	LimitW    float64 `yaml:"limit_w"`
	GuardBand float64 `yaml:"guard_band"`
	Priority  float64 `yaml:"priority"`
	// Nodes, each of GPUs simulated GPUs of Model running Trace (a built-in trace or a CSV
	// file); node i of the leaf starts its trace i × Offset in, so the nodes of a leaf do
	// not run in lock-step unless Offset is 0.
	Nodes  int           `yaml:"nodes"`
	GPUs   int           `yaml:"gpus"`
	Model  string        `yaml:"model"`
	Trace  string        `yaml:"trace"`
	Offset time.Duration `yaml:"offset"`

	line int
}

// File is a fleet: its domain tree and the nodes of its leaves.
type File struct {
	// Group is the root domain's path (one segment).
	Group string
	// Domains by full path.
	Domains map[string]*Domain
	// FloorPerNodeW is the group's floor per node.
	FloorPerNodeW float64 `yaml:"floor_per_node_w"`
	name          string
}

// Paths returns the domains' paths, parents before children.
func (f *File) Paths() []string {
	out := make([]string, 0, len(f.Domains))
	for p := range f.Domains {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Leaves returns the paths of the domains that hold nodes, sorted.
func (f *File) Leaves() []string {
	var out []string
	for _, p := range f.Paths() {
		if f.Domains[p].Nodes > 0 {
			out = append(out, p)
		}
	}
	return out
}

// Nodes is how many nodes the fleet holds.
func (f *File) Nodes() int {
	n := 0
	for _, d := range f.Domains {
		n += d.Nodes
	}
	return n
}

// Load reads and checks a fleet file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the fleet file: %w", err)
	}
	return Parse(path, data)
}

// Parse reads and checks a fleet file's content; name is how errors name it. Every error names
// the file, the line and the key.
func Parse(name string, data []byte) (*File, error) {
	var raw struct {
		Domains       map[string]*Domain `yaml:"domains"`
		FloorPerNodeW float64            `yaml:"floor_per_node_w"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// Lines, for the checks below.
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(doc.Content) == 1 {
		top := doc.Content[0]
		for i := 0; i+1 < len(top.Content); i += 2 {
			if top.Content[i].Value != "domains" {
				continue
			}
			m := top.Content[i+1]
			for j := 0; j+1 < len(m.Content); j += 2 {
				if d := raw.Domains[m.Content[j].Value]; d != nil {
					d.line = m.Content[j].Line
				}
			}
		}
	}
	f := &File{Domains: raw.Domains, FloorPerNodeW: raw.FloorPerNodeW, name: name}
	if err := f.check(); err != nil {
		return nil, err
	}
	return f, nil
}

// check validates the tree and fills in defaults (8 GPUs, H100, the inference trace).
func (f *File) check() error {
	if len(f.Domains) == 0 {
		return fmt.Errorf("%s: no domains (want domains: {site: {limit_w: W}, site/rack1: {limit_w: W, nodes: N, ...}})", f.name)
	}
	if math.IsNaN(f.FloorPerNodeW) || f.FloorPerNodeW < 0 || f.FloorPerNodeW >= cluster.MaxWatts {
		return fmt.Errorf("%s: floor_per_node_w %v out of range (allowed: 0 to %g)", f.name, f.FloorPerNodeW, cluster.MaxWatts)
	}
	var roots []string
	for _, p := range f.Paths() {
		d := f.Domains[p]
		if d == nil {
			return fmt.Errorf("%s: domains.%s: empty (want {limit_w: W})", f.name, p)
		}
		at := fmt.Sprintf("%s:%d: domains.%s", f.name, d.line, p)
		if err := cluster.ValidPath(p); err != nil {
			return fmt.Errorf("%s: not a domain path: %w", at, err)
		}
		_, rel, _ := strings.Cut(p, "/")
		if rel == "" {
			roots = append(roots, p)
		} else if parent := p[:strings.LastIndexByte(p, '/')]; f.Domains[parent] == nil {
			return fmt.Errorf("%s: its parent %s is not in the file (a parent is listed with its children)", at, parent)
		}
		switch {
		case math.IsNaN(d.LimitW) || d.LimitW < cluster.MinBudgetW || d.LimitW >= cluster.MaxWatts:
			return fmt.Errorf("%s.limit_w: %v out of range (allowed: %d to %g)", at, d.LimitW, cluster.MinBudgetW, cluster.MaxWatts)
		case math.IsNaN(d.GuardBand) || d.GuardBand < 0 || d.GuardBand > cluster.MaxGuardBand:
			return fmt.Errorf("%s.guard_band: %v out of range (allowed: 0 to %g)", at, d.GuardBand, cluster.MaxGuardBand)
		case math.IsNaN(d.Priority) || d.Priority != 0 && (d.Priority < 1 || d.Priority > 1000):
			return fmt.Errorf("%s.priority: %v out of range (allowed: 1 to 1000)", at, d.Priority)
		case d.Nodes < 0 || d.Nodes > MaxNodes:
			return fmt.Errorf("%s.nodes: %d out of range (allowed: 0 to %d)", at, d.Nodes, MaxNodes)
		case d.Offset < 0:
			return fmt.Errorf("%s.offset: %s is negative", at, d.Offset)
		}
		if d.Nodes == 0 {
			if d.GPUs != 0 || d.Model != "" || d.Trace != "" {
				return fmt.Errorf("%s: gpus, model and trace describe nodes; set nodes too", at)
			}
			continue
		}
		if hasChildren(f, p) {
			return fmt.Errorf("%s.nodes: only a leaf domain holds nodes (this one has domains below it)", at)
		}
		if d.GPUs == 0 {
			d.GPUs = 8
		}
		if d.Model == "" {
			d.Model = "H100"
		}
		if d.Trace == "" {
			d.Trace = "inference"
		}
		if d.GPUs < 1 || d.GPUs > sim.MaxGPUs {
			return fmt.Errorf("%s.gpus: %d out of range (allowed: 1 to %d)", at, d.GPUs, sim.MaxGPUs)
		}
		m, err := sim.LookupModel(d.Model)
		if err != nil {
			return fmt.Errorf("%s.model: %w", at, err)
		}
		if _, err := sim.NewTrace(d.Trace, m, d.GPUs, 1); err != nil {
			return fmt.Errorf("%s.trace: %w", at, err)
		}
	}
	if len(roots) != 1 {
		return fmt.Errorf("%s: want one root domain (a path of one segment, the group), found %d: %s", f.name, len(roots), strings.Join(roots, ", "))
	}
	f.Group = roots[0]
	if n := f.Nodes(); n == 0 || n > MaxNodes {
		return fmt.Errorf("%s: %d nodes in all (allowed: 1 to %d); a leaf holds nodes with nodes: N", f.name, n, MaxNodes)
	}
	return nil
}

func hasChildren(f *File, p string) bool {
	for q := range f.Domains {
		if strings.HasPrefix(q, p+"/") {
			return true
		}
	}
	return false
}
