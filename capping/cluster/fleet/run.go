package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// StartupPeriods are the periods at the start left out of every figure but the work: the
// controllers start from the GPUs' default limits, a transient no limit caused.
const StartupPeriods = 10

// Options configure a run.
type Options struct {
	File     *File
	Duration time.Duration
	// Settings are every node controller's; Period is also the allocation period.
	Settings capping.Settings
	// LeaseTTL is the members' lease TTL; 0 means 10 s.
	LeaseTTL time.Duration
	// Seed makes the traces and the GPUs' noise reproducible; node i of a run uses Seed + i.
	Seed int64
	// Nodes overrides the node count of leaves, by path (the oversubscription search).
	Nodes map[string]int
	// Subtree, when set, simulates only the domain at this path and the domains below it.
	Subtree string
	// Baselines scores each node twice more: uncapped (its GPUs at their default limits) and
	// under static caps (each GPU at the tightest of its domains' limit / GPUs). Neither has a
	// controller, so both come in closed form from the trace and the simulator's laws
	// (baseline.go), not from fleets of their own.
	Baselines bool
	// StateDir receives the controllers' state files.
	StateDir string
	Log      *slog.Logger
	// Sample, when set, receives every period's Σ draw of each domain, in Report.Domains
	// order; the slice is reused.
	Sample func(elapsed time.Duration, drawW []float64)

	// stepped runs the baselines as simulated fleets of their own, as the closed form's test
	// compares.
	stepped bool
}

// DomainReport is how one domain fared.
type DomainReport struct {
	Path   string  `json:"path"`
	LimitW float64 `json:"limit_w"`
	Nodes  int     `json:"nodes"`
	// TimeOverLimitPct is the share of periods whose Σ draw under the domain exceeded its
	// limit; MaxOvershootPct the largest excess, as a share of the limit.
	TimeOverLimitPct float64 `json:"time_over_limit_pct"`
	MaxOvershootPct  float64 `json:"max_overshoot_pct"`
	DrawP50W         float64 `json:"draw_p50_w"`
	DrawP95W         float64 `json:"draw_p95_w"`
	DrawP99W         float64 `json:"draw_p99_w"`
	DrawMaxW         float64 `json:"draw_max_w"`
	// OversubscribedPct is the share of rounds in which the allocator found the domain's
	// floors above its limit.
	OversubscribedPct float64 `json:"oversubscribed_pct"`
	// StaticTimeOverLimitPct is the same figure under static per-GPU caps (with Baselines).
	StaticTimeOverLimitPct float64 `json:"static_time_over_limit_pct"`
}

// JobReport is how the nodes of one leaf (one job: its trace on its nodes) fared.
type JobReport struct {
	Domain string `json:"domain"`
	Trace  string `json:"trace"`
	Nodes  int    `json:"nodes"`
	GPUs   int    `json:"gpus"`
	// Throughput is the work the GPUs did (seconds of a fully busy GPU at full clock), as a
	// share of what they did uncapped and under static caps (with Baselines).
	ThroughputVsUncappedPct float64 `json:"throughput_vs_uncapped_pct"`
	ThroughputVsStaticPct   float64 `json:"throughput_vs_static_pct"`
	WorkGPUSeconds          float64 `json:"work_gpu_seconds"`
}

// Report is what a run found.
type Report struct {
	Domains []DomainReport `json:"domains"`
	Jobs    []JobReport    `json:"jobs"`
	Periods int            `json:"periods"`
	Nodes   int            `json:"nodes"`
	GPUs    int            `json:"gpus"`
	// GrantWrites and RecordWrites are the grants the allocator published and the node
	// records the members wrote: the etcd writes the run would have cost.
	GrantWrites  int `json:"grant_writes"`
	RecordWrites int `json:"record_writes"`
	// FastCuts is how many times the controllers cut their caps between periods (the fast
	// sample's cut); 0 with fast_sample: false.
	FastCuts int           `json:"fast_cuts"`
	Wall     time.Duration `json:"-"`
}

// shifted is a node's view of the shared clock: its trace starts offset before the run does.
type shifted struct {
	c     *clock.Manual
	shift time.Duration
}

func (s *shifted) Now() time.Time {
	if s.shift == 0 {
		return s.c.Now() // once the fleet is built: every GPU read asks
	}
	return s.c.Now().Add(s.shift)
}

// node is one simulated node: its GPUs, controller and member, and its baselines.
type node struct {
	name string
	// clock is the node's own view of the run's clock: it moves through the node's fast
	// samples while other nodes run theirs, and meets the run's clock at every period's end.
	clock    *clock.Manual
	job      int   // index into the report's jobs
	doms     []int // its domains, leaf first, as indexes into the run's domains
	gpus     *sim.Fleet
	uncapped *sim.Fleet // the baselines stepped (Options.stepped), or
	static   *sim.Fleet
	base     *baseline // in closed form
	ctl      *capping.Controller
	member   *cluster.Member
	last     cluster.NodeRecord
	build    *nodeBuild // until start has built it
	written  bool
	// work0 is the work its GPUs (and the stepped baselines') had done when the run started:
	// a node's trace starts its offset before the run, and the report counts the run's work.
	work0   [3]float64
	drawW   float64 // this period's draw, and the static baseline's
	staticW float64
}

// run is one simulation in progress.
type run struct {
	o      Options
	clock  *clock.Manual
	view   *cluster.View
	plan   *cluster.Planner
	paths  []string // domains simulated, parents first
	rels   []string // the same, below the simulated root
	limits []float64
	nodes  []*node
	jobs   []JobReport
}

// Run simulates o.Duration of the fleet and reports per domain and per job.
func Run(o Options) (*Report, error) {
	wall := time.Now()
	r, err := start(o)
	if err != nil {
		return nil, err
	}
	defer r.stop()
	period := o.Settings.Period
	periods := int(o.Duration / period)
	scored := max(periods-StartupPeriods, 0)
	nd := len(r.paths)
	draws := make([][]float32, nd)
	for i := range draws {
		draws[i] = make([]float32, 0, periods)
	}
	over := make([]int, nd)
	staticOver := make([]int, nd)
	overshoot := make([]float64, nd)
	oversub := make([]int, nd)
	sum := make([]float64, nd)
	staticSum := make([]float64, nd)
	var written []string
	rep := &Report{Periods: periods}
	// Between periods the controllers take their fast samples, as the agent's loop does.
	every := 1
	if o.File.FastSample {
		every = r.nodes[0].ctl.FastEvery()
	}
	origin := r.clock.Now()
	for k := 1; k <= periods; k++ {
		r.clock.Set(origin.Add(time.Duration(k) * period))
		now := r.clock.Now()
		// Each node runs its whole period on its own clock (its fast samples, then its tick):
		// nodes share nothing until the allocator's round, so one pass over them per period
		// does what a pass per fast sample did, with one wait for the cores instead of ten.
		r.each(func(n *node) {
			for j := 1; j < every; j++ {
				n.clock.Set(origin.Add(time.Duration(k-1)*period + period*time.Duration(j)/time.Duration(every)))
				n.ctl.Sample(n.clock.Now())
			}
			n.clock.Set(now)
			n.ctl.Tick(now)
			n.drawW = drawn(n.gpus)
			switch {
			case n.base != nil:
				n.staticW = n.base.drawAt(time.Duration(k) * period)
			case n.static != nil:
				n.staticW = drawn(n.static)
				drawn(n.uncapped) // keeps its integration on the period's steps
			}
		})
		// The members write their records as their report loops would; the allocator runs a
		// round on what they wrote, and the nodes' watches bring its grants.
		for _, n := range r.nodes {
			if !n.member.RecordDue(n.last, n.written) {
				continue
			}
			if rec, ok := n.member.Record(); ok {
				r.view.Nodes[n.name] = rec
				n.last, n.written = rec, true
				rep.RecordWrites++
			}
		}
		written = r.plan.Round(now, written[:0])
		rep.GrantWrites += len(written)
		for _, n := range r.nodes {
			g, has := r.view.Grants[n.name]
			n.member.Deliver(g, has, r.view.Budget)
		}
		clear(sum)
		clear(staticSum)
		for _, n := range r.nodes {
			for _, d := range n.doms {
				sum[d] += n.drawW
				staticSum[d] += n.staticW
			}
		}
		if k <= StartupPeriods {
			continue // the controllers start from the GPUs' default limits
		}
		for d := range nd {
			draws[d] = append(draws[d], float32(sum[d]))
			if sum[d] > r.limits[d] {
				over[d]++
				overshoot[d] = math.Max(overshoot[d], (sum[d]-r.limits[d])/r.limits[d])
			}
			if o.Baselines && staticSum[d] > r.limits[d] {
				staticOver[d]++
			}
			if r.plan.Oversubscribed(r.rels[d]) {
				oversub[d]++
			}
		}
		if o.Sample != nil {
			o.Sample(time.Duration(k)*period, sum)
		}
	}
	for d, p := range r.paths {
		dr := DomainReport{Path: p, LimitW: r.limits[d]}
		for _, n := range r.nodes {
			if slices.Contains(n.doms, d) {
				dr.Nodes++
			}
		}
		if scored > 0 {
			dr.TimeOverLimitPct = 100 * float64(over[d]) / float64(scored)
			dr.StaticTimeOverLimitPct = 100 * float64(staticOver[d]) / float64(scored)
			dr.OversubscribedPct = 100 * float64(oversub[d]) / float64(scored)
			dr.MaxOvershootPct = 100 * overshoot[d]
			s := draws[d]
			slices.Sort(s)
			q := func(p float64) float64 { return float64(s[min(len(s)-1, int(p*float64(len(s))))]) }
			dr.DrawP50W, dr.DrawP95W, dr.DrawP99W, dr.DrawMaxW = q(0.5), q(0.95), q(0.99), float64(s[len(s)-1])
		}
		rep.Domains = append(rep.Domains, dr)
	}
	work := make([][3]float64, len(r.jobs))
	for _, n := range r.nodes {
		work[n.job][0] += workOf(n.gpus) - n.work0[0]
		if n.base != nil {
			u, s := n.base.done()
			work[n.job][1] += u
			work[n.job][2] += s
		}
		if n.static != nil {
			work[n.job][1] += workOf(n.uncapped) - n.work0[1]
			work[n.job][2] += workOf(n.static) - n.work0[2]
		}
	}
	for j := range r.jobs {
		jr := r.jobs[j]
		jr.WorkGPUSeconds = work[j][0]
		if work[j][1] > 0 {
			jr.ThroughputVsUncappedPct = 100 * work[j][0] / work[j][1]
		}
		if work[j][2] > 0 {
			jr.ThroughputVsStaticPct = 100 * work[j][0] / work[j][2]
		}
		rep.Jobs = append(rep.Jobs, jr)
		rep.Nodes += jr.Nodes
		rep.GPUs += jr.Nodes * jr.GPUs
	}
	for _, n := range r.nodes {
		rep.FastCuts += int(n.ctl.FastCuts())
	}
	rep.Wall = time.Since(wall)
	return rep, nil
}

// start builds the tree, the nodes and their controllers, and the allocator's view.
func start(o Options) (*run, error) {
	f := o.File
	if f == nil || o.Duration <= 0 || o.Settings.Period <= 0 {
		return nil, errors.New("fleet simulation: a fleet file, a positive duration and a positive period are needed")
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	root := f.Group
	if o.Subtree != "" {
		if f.Domains[o.Subtree] == nil {
			return nil, fmt.Errorf("fleet simulation: no domain %s in the fleet file", o.Subtree)
		}
		root = o.Subtree
	}
	// The simulated group is the subtree's root; its name is the last segment of its path.
	group := root[strings.LastIndexByte(root, '/')+1:]
	r := &run{o: o, clock: clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	r.view = cluster.NewView(cluster.Keys{Prefix: "/capstan/v1", Group: group})
	r.view.Budget = cluster.BudgetRecord{Watts: f.Domains[root].LimitW * (1 - f.Domains[root].GuardBand), FloorPerNodeW: f.FloorPerNodeW, SetBy: "simulation"}
	r.view.HasBudget = true
	index := map[string]int{}
	for _, p := range f.Paths() {
		if p != root && !strings.HasPrefix(p, root+"/") {
			continue
		}
		d := f.Domains[p]
		index[p] = len(r.paths)
		r.paths = append(r.paths, p)
		r.rels = append(r.rels, strings.TrimPrefix(strings.TrimPrefix(p, root), "/"))
		r.limits = append(r.limits, d.LimitW)
		if p != root {
			r.view.Domains[strings.TrimPrefix(p, root+"/")] = cluster.DomainRecord{LimitW: d.LimitW, GuardBand: d.GuardBand, Priority: d.Priority, SetBy: "simulation"}
		}
	}
	r.view.DomainsChanged++
	r.plan = cluster.NewPlanner(r.view, 2*o.LeaseTTL, r.clock.Now, o.Log)
	seed := o.Seed
	for _, leaf := range f.Leaves() {
		if _, ok := index[leaf]; !ok {
			continue
		}
		d := f.Domains[leaf]
		count := d.Nodes
		if c, ok := o.Nodes[leaf]; ok {
			count = c
		}
		job := len(r.jobs)
		r.jobs = append(r.jobs, JobReport{Domain: leaf, Trace: d.Trace, Nodes: count, GPUs: d.GPUs})
		model, err := sim.LookupModel(d.Model)
		if err != nil {
			return nil, err
		}
		staticW := r.staticCap(leaf, index, model, o.Nodes)
		var doms []int
		for p := leaf; ; p = p[:strings.LastIndexByte(p, '/')] {
			doms = append(doms, index[p])
			if p == root {
				break
			}
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(leaf, root), "/")
		for i := range count {
			seed++
			n := &node{name: fmt.Sprintf("%s-%d", strings.ReplaceAll(rel, "/", "-"), i), job: job, doms: doms, clock: clock.NewManual(r.clock.Now())}
			if rel == "" {
				n.name = fmt.Sprintf("node-%d", i)
			}
			n.build = &nodeBuild{d: d, model: model, rel: rel, seed: seed, off: time.Duration(i) * d.Offset, staticW: staticW, id: int64(len(r.nodes) + 1)}
			r.nodes = append(r.nodes, n)
		}
	}
	if len(r.nodes) == 0 {
		return nil, fmt.Errorf("fleet simulation: no nodes under %s", root)
	}
	// The nodes are independent until the first round, each built from its own seed: they are
	// built (their GPUs brought through their trace offsets, their controllers started) on
	// every core.
	errs := make([]error, len(r.nodes))
	r.eachIndex(func(i int, n *node) {
		errs[i] = r.build(n)
		n.build = nil
	})
	for _, err := range errs {
		if err != nil {
			r.stop()
			return nil, err // the first node's, as a serial build would have stopped there
		}
	}
	return r, nil
}

// nodeBuild is what start decided about a node, for build to make it.
type nodeBuild struct {
	d       *Domain
	model   sim.Model
	rel     string
	seed    int64
	off     time.Duration
	staticW float64
	id      int64
}

// build makes a node's GPUs, baselines, member and controller, and starts the controller.
func (r *run) build(n *node) error {
	o, b := r.o, n.build
	var err error
	var onDemand func(gpu int, demandW, dtS float64)
	if o.Baselines && !o.stepped {
		if n.base, err = newBaseline(b.d, b.model, b.seed, b.off, b.staticW); err != nil {
			return err
		}
		onDemand = n.base.step
	}
	if n.gpus, err = r.fleet(n.clock, b.d, b.seed, b.off, onDemand); err != nil {
		return err
	}
	if o.Baselines && o.stepped {
		if n.uncapped, err = r.fleet(n.clock, b.d, b.seed, b.off, nil); err != nil {
			return err
		}
		if n.static, err = r.fleet(n.clock, b.d, b.seed, b.off, nil); err != nil {
			return err
		}
		if err := setAll(n.static, b.staticW); err != nil {
			return err
		}
		n.work0[1], n.work0[2] = workOf(n.uncapped), workOf(n.static)
	}
	n.work0[0] = workOf(n.gpus)
	n.member, err = cluster.NewLocalMember(cluster.Options{Keys: r.view.Keys, Node: n.name, Domain: b.rel, LeaseTTL: o.LeaseTTL,
		Period: o.Settings.Period, Priority: 1, Now: n.clock.Now, Log: o.Log}, b.id)
	if err != nil {
		return err
	}
	set := o.Settings
	set.StateFile = filepath.Join(o.StateDir, n.name+".json")
	set.DryRun = false
	ctl, err := capping.New(capping.Options{Settings: set, Lib: n.gpus, Budget: budget.NewEtcd(n.member, n.clock.Now), Log: o.Log, Now: n.clock.Now})
	if err != nil {
		return err
	}
	if err := ctl.Start(); err != nil {
		return fmt.Errorf("starting the controller of node %s: %w", n.name, err)
	}
	n.ctl = ctl
	if n.base != nil {
		n.base.restart() // the run's work counts from here, as work0 does the GPUs'
	}
	return nil
}

// staticCap is the static baseline's per-GPU limit for the GPUs of leaf: the tightest of
// limit / GPUs over the leaf and its ancestors, within the model's constraints.
func (r *run) staticCap(leaf string, index map[string]int, m sim.Model, counts map[string]int) float64 {
	f := r.o.File
	per := m.MaxLimitW
	for p := range index {
		if p != leaf && !strings.HasPrefix(leaf, p+"/") {
			continue
		}
		gpus := 0
		for _, l := range f.Leaves() {
			if _, in := index[l]; in && (l == p || strings.HasPrefix(l, p+"/")) {
				n := f.Domains[l].Nodes
				if c, ok := counts[l]; ok {
					n = c
				}
				gpus += n * f.Domains[l].GPUs
			}
		}
		if gpus > 0 {
			d := f.Domains[p]
			per = math.Min(per, d.LimitW*(1-d.GuardBand)/float64(gpus))
		}
	}
	return math.Floor(math.Min(math.Max(per, m.MinLimitW), m.MaxLimitW))
}

// fleet builds one node's simulated GPUs on the node's clock, its trace offset into its run.
// onDemand, when set, receives every physics step's demand (the closed-form baselines).
func (r *run) fleet(clk *clock.Manual, d *Domain, seed int64, off time.Duration, onDemand func(gpu int, demandW, dtS float64)) (*sim.Fleet, error) {
	c := &shifted{c: clk, shift: -off}
	var step time.Duration // without a file, the 10 ms step
	if r.o.File != nil {
		step = r.o.File.PhysicsStep
	}
	f, err := sim.New(sim.Options{Model: d.Model, Count: d.GPUs, Trace: d.Trace, Seed: seed, Clock: c, Step: step, OnDemand: onDemand})
	if err != nil {
		return nil, err
	}
	c.shift = 0
	if ret := f.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("initialising a simulated node: %w", ret)
	}
	return f, nil
}

func setAll(f *sim.Fleet, w float64) error {
	for i := range f.Count() {
		d, _ := f.DeviceGetHandleByIndex(i)
		if ret := d.SetPowerManagementLimit(uint32(w) * 1000); ret != nvml.SUCCESS {
			return fmt.Errorf("setting a static limit of %.0f W: %w", w, ret)
		}
	}
	return nil
}

func drawn(f *sim.Fleet) float64 {
	s := 0.0
	for i := range f.Count() {
		s += f.GPU(i).DrawnW()
	}
	return s
}

func workOf(f *sim.Fleet) float64 {
	s := 0.0
	for i := range f.Count() {
		s += f.GPU(i).State().WorkSeconds
	}
	return s
}

// each runs f on every node, the nodes shared among the machine's cores in small batches that
// a core takes when it is free (an inference node costs more than an idle one): nodes share
// nothing between the allocator's rounds, each running on its own clock.
func (r *run) each(f func(n *node)) { r.eachIndex(func(_ int, n *node) { f(n) }) }

// eachIndex is each, with the node's index.
func (r *run) eachIndex(f func(i int, n *node)) {
	workers := min(runtime.GOMAXPROCS(0), len(r.nodes))
	if workers <= 1 {
		for i, n := range r.nodes {
			f(i, n)
		}
		return
	}
	// Batches of up to 8 nodes, and at least 4 per core so that a small fleet (a search
	// trial's leaf) ends its pass with the cores evenly loaded.
	batch := min(8, max(1, len(r.nodes)/(4*workers)))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(int64(batch))) - batch
				if i >= len(r.nodes) {
					return
				}
				for j := i; j < min(i+batch, len(r.nodes)); j++ {
					f(j, r.nodes[j])
				}
			}
		})
	}
	wg.Wait()
}

func (r *run) stop() {
	for _, n := range r.nodes {
		if n.ctl == nil {
			continue // never started: its build failed
		}
		_ = n.ctl.Stop(capping.ExitConfigured)
	}
}
