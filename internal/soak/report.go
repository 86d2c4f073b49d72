package soak

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// Growth is the most RSS and goroutines may grow from a process's second quarter to its last.
const Growth = 0.05

// MetricsP99 is the most the p99 of /metrics under Scrapers concurrent scrapers may take.
const MetricsP99 = 50 * time.Millisecond

// Report is soak-report.json.
type Report struct {
	Pass     bool      `json:"pass"`
	Seed     uint64    `json:"seed"`
	Duration string    `json:"duration"`
	Started  time.Time `json:"started"`
	Ended    time.Time `json:"ended"`
	Setup    setup     `json:"setup"`
	// FaultsInjected counts the faults per kind; Skipped says why a kind was not injected.
	FaultsInjected map[string]int    `json:"faults_injected"`
	Skipped        map[string]string `json:"faults_skipped,omitempty"`
	Faults         []*faultRecord    `json:"faults"`
	// Checks and Violations count per invariant kind.
	Checks        map[string]int       `json:"checks"`
	Violations    map[string]int       `json:"violations"`
	ViolationList []devstate.Violation `json:"violation_list"`
	ExcusedRounds int                  `json:"budget_rounds_excused_for_faults"`
	Crashes       []crashRecord        `json:"crashes"`
	Successors    []successorRecord    `json:"successors_after_kill"`
	Processes     []processReport      `json:"processes"`
	OTLP          otlpReport           `json:"otlp"`
	Metrics       metricsReport        `json:"metrics_endpoint"`
	Alerts        alertsReport         `json:"alerts"`
	Panels        []panelResult        `json:"dashboard_panels"`
	Timeline      []timePoint          `json:"timeline"`
}

type setup struct {
	Agents       int               `json:"agents"`
	GPUsPerAgent int               `json:"gpus_per_agent"`
	Period       string            `json:"control_period"`
	Settle       string            `json:"settle_window"`
	BudgetW      float64           `json:"group_budget_w"`
	FloorW       float64           `json:"floor_per_node_w"`
	Modes        map[string]string `json:"on_exit_after_crash"`
	BudgetSource map[string]string `json:"budget_source"`
	// SensorTree says how the agents' sysfs is served: through FUSE, or why a plain copy.
	SensorTree    string  `json:"sensor_tree"`
	AlertForScale float64 `json:"alert_for_scale"`
}

type processReport struct {
	Node    string     `json:"node"`
	PID     int        `json:"pid"`
	Started time.Time  `json:"started"`
	Exited  *time.Time `json:"exited,omitempty"`
	Status  string     `json:"status,omitempty"`
	Signal  string     `json:"stopped_by,omitempty"`
	// Growth of the medians from the second quarter of the process's life to the last, when
	// it lived long enough to say (three quarters of the run).
	RSSGrowth       *float64   `json:"rss_growth,omitempty"`
	GoroutineGrowth *float64   `json:"goroutine_growth,omitempty"`
	Samples         []procStat `json:"samples,omitempty"`
}

type otlpReport struct {
	Points           int            `json:"counter_points"`
	ResetsAtRestarts int            `json:"resets_across_restarts_or_reloads"`
	Discontinuities  []string       `json:"discontinuities"`
	Outages          []outageRecord `json:"outages"`
	IntervalS        float64        `json:"export_interval_s"`
}

type metricsReport struct {
	Requests int      `json:"requests"`
	P50ms    float64  `json:"p50_ms"`
	P99ms    float64  `json:"p99_ms"`
	MaxMs    float64  `json:"max_ms"`
	Failures []string `json:"failures,omitempty"`
}

type alertsReport struct {
	Fired  map[string]int    `json:"fired_polls"`
	Scaled map[string]string `json:"for_scaled"`
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func median(v []float64) float64 { return percentile(v, 0.5) }

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// growth compares the medians of the second and the last quarter of samples. With steady,
// only the samples taken with no fault of the node's own and no etcd fault in flight or just
// ended count (goroutines move with those: an etcd cluster down holds fewer, a hung NVML call
// more); when the second quarter has fewer than three, the steady samples of the first half
// stand in for it.
func growth(samples []procStat, value func(procStat) float64, steady bool) float64 {
	n := len(samples)
	pick := func(from, to int) []float64 {
		var out []float64
		for _, s := range samples[from:to] {
			if !steady || s.Steady {
				out = append(out, value(s))
			}
		}
		return out
	}
	q2, q4 := pick(n/4, n/2), pick(3*n/4, n)
	if len(q2) < 3 {
		q2 = pick(0, n/2)
	}
	if len(q2) == 0 || len(q4) == 0 || median(q2) == 0 {
		return 0
	}
	return median(q4)/median(q2) - 1
}

// MinFlatLife is the shortest life a process's RSS and goroutines are checked over: the Go
// runtime's heap and the agent's caches take minutes to reach their working size, so over a
// few minutes growth says nothing about a leak. Shorter runs report the growth unchecked.
const MinFlatLife = 20 * time.Minute

func (h *harness) report(panels []panelResult) *Report {
	ended := time.Now()
	h.checkOTLP()
	r := &Report{Seed: h.cfg.Seed, Duration: h.cfg.Duration.String(), Started: h.started, Ended: ended,
		FaultsInjected: map[string]int{}, Panels: panels}
	r.Setup = setup{Agents: h.cfg.Agents, GPUsPerAgent: h.cfg.GPUs, Period: h.cfg.Period.String(), Settle: h.cfg.Settle.String(),
		BudgetW: h.baseBudgetW, FloorW: h.floorW, Modes: map[string]string{}, BudgetSource: map[string]string{}, AlertForScale: h.cfg.AlertForScale,
		SensorTree: "FUSE"}
	if h.noSensorTree != "" {
		r.Setup.SensorTree = h.noSensorTree
	}
	for _, a := range h.agents {
		r.Setup.Modes[a.name] = a.onExit + "/" + a.crash
		r.Setup.BudgetSource[a.name] = "etcd"
		if !hasEtcd(a) {
			r.Setup.BudgetSource[a.name] = "file"
		}
		a.mu.Lock()
		hist := slices.Clone(a.history)
		a.mu.Unlock()
		for _, p := range hist {
			pr := processReport{Node: a.name, PID: p.pid, Started: p.started, Status: p.status, Signal: p.signalled, Samples: p.stats}
			if !p.exitedAt.IsZero() {
				t := p.exitedAt
				pr.Exited = &t
			}
			life := ended.Sub(p.started)
			if !p.exitedAt.IsZero() {
				life = p.exitedAt.Sub(p.started)
			}
			if life >= h.cfg.Duration*3/4 && len(p.stats) >= 8 {
				rss := growth(p.stats, func(s procStat) float64 { return float64(s.RSSBytes) }, false)
				gor := growth(p.stats, func(s procStat) float64 { return float64(s.Goroutines) }, true)
				pr.RSSGrowth, pr.GoroutineGrowth = &rss, &gor
				if life < MinFlatLife {
					r.Processes = append(r.Processes, pr)
					continue
				}
				var v *devstate.Violation
				if rss > Growth {
					v = &devstate.Violation{At: ended, Node: a.name, Detail: fmt.Sprintf("PID %d: RSS grew %.1f %% from the second quarter of its life to the last", p.pid, 100*rss)}
				}
				h.check.Add("rss_flat", v)
				v = nil
				if gor > Growth {
					v = &devstate.Violation{At: ended, Node: a.name, Detail: fmt.Sprintf("PID %d: goroutines grew %.1f %% from the second quarter of its life to the last", p.pid, 100*gor)}
				}
				h.check.Add("goroutines_flat", v)
			}
			r.Processes = append(r.Processes, pr)
		}
	}
	h.mu.Lock()
	r.Skipped = h.skipped
	r.Faults = h.faults
	for _, f := range h.faults {
		r.FaultsInjected[f.Kind]++
	}
	r.Crashes = h.crashes
	r.Successors = h.successors
	r.Timeline = h.timeline
	lat := h.latencies
	r.Metrics = metricsReport{Requests: len(lat), P50ms: percentile(lat, 0.5), P99ms: percentile(lat, 0.99), MaxMs: percentile(lat, 1), Failures: h.scrapeFail}
	r.Alerts = alertsReport{Fired: map[string]int{}, Scaled: h.alertScaled}
	for name, s := range h.alertObs {
		r.Alerts.Fired[name] = len(s)
	}
	r.OTLP = otlpReport{Outages: h.outages, IntervalS: h.cfg.OTLPInterval.Seconds()}
	h.mu.Unlock()
	var v *devstate.Violation
	if r.Metrics.P99ms > float64(MetricsP99.Milliseconds()) {
		v = &devstate.Violation{At: ended, Detail: fmt.Sprintf("/metrics p99 %.1f ms over %d requests at %d concurrent scrapers, above %v", r.Metrics.P99ms, r.Metrics.Requests, Scrapers, MetricsP99)}
	}
	h.check.Add("metrics_p99", v)
	for _, k := range faultKinds() {
		v = nil
		if r.FaultsInjected[k.name] == 0 {
			why := r.Skipped[k.name]
			if why == "" {
				why = "not injected"
			}
			v = &devstate.Violation{At: ended, Detail: fmt.Sprintf("fault %s never injected: %s", k.name, why)}
		}
		h.check.Add("every_fault_injected", v)
	}
	h.otlp.mu.Lock()
	r.OTLP.Points, r.OTLP.ResetsAtRestarts, r.OTLP.Discontinuities = h.otlp.points, h.otlp.resets, slices.Clone(h.otlp.problems)
	h.otlp.mu.Unlock()
	r.Checks, r.Violations, r.ViolationList, r.ExcusedRounds = h.check.Checks(), h.check.Counts(), h.check.Violations(), h.check.ExcusedRounds()
	// Lists are lists in the JSON, empty rather than null.
	r.ViolationList = nonNil(r.ViolationList)
	r.Crashes = nonNil(r.Crashes)
	r.Successors = nonNil(r.Successors)
	r.OTLP.Discontinuities = nonNil(r.OTLP.Discontinuities)
	r.OTLP.Outages = nonNil(r.OTLP.Outages)
	r.Pass = len(r.Violations) == 0
	return r
}

// checkOTLP checks, once the run is over, that after every OTLP outage each node running
// through it delivered again within two export intervals, and that counters stayed continuous.
func (h *harness) checkOTLP() {
	h.mu.Lock()
	outages := h.outages
	h.mu.Unlock()
	limit := 2 * h.cfg.OTLPInterval
	for i := range outages {
		o := &outages[i]
		o.Delay = map[string]float64{}
		for _, a := range h.agents {
			if !h.ranThrough(a, o.Ended.Add(-time.Second), o.Ended.Add(limit)) {
				continue
			}
			first := h.otlp.firstArrival(a.name, o.Ended)
			var v *devstate.Violation
			if first.IsZero() || first.Sub(o.Ended) > limit {
				d := "nothing arrived"
				if !first.IsZero() {
					d = fmt.Sprintf("first data after %.1f s", first.Sub(o.Ended).Seconds())
				}
				v = &devstate.Violation{At: o.Ended, Node: a.name, Detail: fmt.Sprintf("after %s: %s, more than two export intervals (%v)", o.Kind, d, limit)}
			}
			if !first.IsZero() {
				o.Delay[a.name] = math.Round(first.Sub(o.Ended).Seconds()*10) / 10
			}
			h.check.Add("otlp_back_within_two_intervals", v)
		}
	}
	h.mu.Lock()
	h.outages = outages
	h.mu.Unlock()
	h.otlp.mu.Lock()
	problems := slices.Clone(h.otlp.problems)
	h.otlp.mu.Unlock()
	for _, p := range problems {
		h.check.Add("otlp_counters_continuous", &devstate.Violation{At: time.Now(), Detail: p})
	}
	if len(problems) == 0 {
		h.check.Add("otlp_counters_continuous", nil)
	}
}

// ranThrough tells whether one process of a ran from before from to after to.
func (h *harness) ranThrough(a *agent, from, to time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.history {
		if p.started.Before(from) && (p.exitedAt.IsZero() || p.exitedAt.After(to)) && !p.ready.IsZero() && p.ready.Before(from) {
			return true
		}
	}
	return false
}

// Summary is the run's outcome in a few lines.
func (r *Report) Summary() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	total := 0
	for _, n := range r.FaultsInjected {
		total += n
	}
	fmt.Fprintf(&b, "soak %s: %s, seed %d, %d faults of %d kinds, %d crashes, /metrics p99 %.1f ms over %d requests\n",
		verdict, r.Duration, r.Seed, total, len(r.FaultsInjected), len(r.Crashes), r.Metrics.P99ms, r.Metrics.Requests)
	for _, k := range sortedKeys(r.Checks) {
		fmt.Fprintf(&b, "  %-32s %6d checks %4d violations\n", k, r.Checks[k], r.Violations[k])
	}
	for _, k := range sortedKeys(r.Violations) {
		if _, ok := r.Checks[k]; !ok {
			fmt.Fprintf(&b, "  %-32s %4d violations\n", k, r.Violations[k])
		}
	}
	for i, v := range r.ViolationList {
		if i == 20 {
			fmt.Fprintf(&b, "  … %d more in soak-report.json\n", len(r.ViolationList)-20)
			break
		}
		fmt.Fprintf(&b, "  VIOLATION %s %s %s: %s\n", v.At.UTC().Format("15:04:05"), v.Kind, v.Node, v.Detail)
	}
	return b.String()
}

func (r *Report) write(dir string) error {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "soak-report.json"), raw, 0o644); err != nil {
		return err
	}
	return r.plot(filepath.Join(dir, "soak.png"))
}

// plot draws the group budget, Σ limits and Σ draw over the run, with a tick per fault.
func (r *Report) plot(path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("capstan soak, seed %d: %d agents × %d GPUs", r.Seed, r.Setup.Agents, r.Setup.GPUsPerAgent)
	p.X.Label.Text = "time (min)"
	p.Y.Label.Text = "W"
	line := func(name string, c color.Color, width vg.Length, y func(timePoint) float64) error {
		pts := make(plotter.XYs, 0, len(r.Timeline))
		for _, t := range r.Timeline {
			pts = append(pts, plotter.XY{X: t.T / 60, Y: y(t)})
		}
		if len(pts) == 0 {
			return nil
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color, l.Width = c, width
		p.Add(l)
		p.Legend.Add(name, l)
		return nil
	}
	if err := line("group budget", color.RGBA{R: 200, A: 255}, vg.Points(1.5), func(t timePoint) float64 { return t.BudgetW }); err != nil {
		return err
	}
	if err := line("Σ limits", color.RGBA{B: 200, A: 255}, vg.Points(1), func(t timePoint) float64 { return t.LimitsW }); err != nil {
		return err
	}
	if err := line("Σ draw", color.RGBA{G: 150, A: 255}, vg.Points(1), func(t timePoint) float64 { return t.DrawW }); err != nil {
		return err
	}
	var marks plotter.XYs
	for _, f := range r.Faults {
		marks = append(marks, plotter.XY{X: f.Start.Sub(r.Started).Minutes(), Y: 0})
	}
	if len(marks) > 0 {
		s, err := plotter.NewScatter(marks)
		if err != nil {
			return err
		}
		s.Shape = draw.PyramidGlyph{}
		s.Color = color.Gray{Y: 80}
		p.Add(s)
		p.Legend.Add("fault injected", s)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(30*vg.Centimeter, 15*vg.Centimeter, path)
}
