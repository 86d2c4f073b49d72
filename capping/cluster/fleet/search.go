package fleet

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// Oversubscription is the search's answer for one leaf domain.
type Oversubscription struct {
	Path string `json:"path"`
	// NameplateNodes is how many nodes fit the domain's limit at their GPUs' maximum limits.
	NameplateNodes int `json:"nameplate_nodes"`
	// MaxNodes is the most nodes the domain held with zero time over its limit and at most
	// the allowed throughput loss; 0 when not even one node did.
	MaxNodes int `json:"max_nodes"`
	// ThroughputLossPct is the loss against the same nodes uncapped at MaxNodes, and
	// TimeOverLimitPct the time over the limit there.
	ThroughputLossPct float64 `json:"throughput_loss_pct"`
	TimeOverLimitPct  float64 `json:"time_over_limit_pct"`
	// Runs is how many simulations the search took; Trials are their outcomes, in the order
	// they ran.
	Runs   int     `json:"runs"`
	Trials []Trial `json:"trials"`
}

// Trial is one simulation of the search: a leaf with Nodes nodes.
type Trial struct {
	Nodes             int     `json:"nodes"`
	ThroughputLossPct float64 `json:"throughput_loss_pct"`
	TimeOverLimitPct  float64 `json:"time_over_limit_pct"`
}

// SearchOptions bound the oversubscription search.
type SearchOptions struct {
	// MaxLossPct is the throughput loss allowed, in percent of the uncapped throughput.
	MaxLossPct float64
	// Duration is the simulated time of each trial.
	Duration time.Duration
	// MaxFactor bounds the search at this many times the nameplate count.
	MaxFactor float64
	// Levels also answers for the domains above the leaves: each runs its whole subtree with
	// its leaves at their answers, scaled down together until every domain and job passes.
	Levels bool
}

// Search finds, for every leaf domain of o.File, the most nodes it holds alone under its own
// limit with zero time over it and at most s.MaxLossPct of throughput lost against the same
// nodes uncapped: one simulation of the leaf per trial, its node count doubled from the
// nameplate count until a trial fails, then bisected. The levels above a leaf are left out:
// what a row can hold is what its racks hold, within the row's limit, which the full run checks.
func Search(o Options, s SearchOptions) ([]Oversubscription, error) {
	if s.MaxFactor <= 1 {
		s.MaxFactor = 8
	}
	o.Duration = s.Duration
	o.Baselines = true
	o.Sample = nil
	var out []Oversubscription
	for _, leaf := range o.File.Leaves() {
		d := o.File.Domains[leaf]
		m, err := sim.LookupModel(d.Model)
		if err != nil {
			return nil, err
		}
		res := Oversubscription{Path: leaf, NameplateNodes: int(math.Floor(d.LimitW / (float64(d.GPUs) * m.MaxLimitW)))}
		trial := func(n int) (ok bool, loss, over float64, err error) {
			lo := o
			lo.Subtree, lo.Nodes = leaf, map[string]int{leaf: n}
			rep, err := Run(lo)
			if err != nil {
				return false, 0, 0, fmt.Errorf("searching %s at %d nodes: %w", leaf, n, err)
			}
			res.Runs++
			loss = 100 - rep.Jobs[0].ThroughputVsUncappedPct
			over = rep.Domains[0].TimeOverLimitPct
			res.Trials = append(res.Trials, Trial{Nodes: n, ThroughputLossPct: loss, TimeOverLimitPct: over})
			return over == 0 && loss <= s.MaxLossPct, loss, over, nil
		}
		good, bad := 0, 0 // the most nodes known to pass, the fewest known to fail (0: none)
		var goodLoss, goodOver float64
		record := func(n int, ok bool, loss, over float64) {
			if ok && n > good {
				good, goodLoss, goodOver = n, loss, over
			}
			if !ok && (bad == 0 || n < bad) {
				bad = n
			}
		}
		limit := max(int(math.Ceil(float64(max(res.NameplateNodes, 1))*s.MaxFactor)), 2)
		for n := max(res.NameplateNodes, 1); bad == 0 && n <= limit; n *= 2 {
			ok, loss, over, err := trial(n)
			if err != nil {
				return nil, err
			}
			record(n, ok, loss, over)
			if !ok {
				break
			}
		}
		if bad == 0 {
			bad = limit + 1
		}
		for bad-good > 1 {
			n := (good + bad) / 2
			if good == 0 && n == 0 {
				break
			}
			ok, loss, over, err := trial(max(n, 1))
			if err != nil {
				return nil, err
			}
			record(max(n, 1), ok, loss, over)
			if !ok && n <= 1 {
				break
			}
		}
		res.MaxNodes, res.ThroughputLossPct, res.TimeOverLimitPct = good, goodLoss, goodOver
		out = append(out, res)
	}
	if s.Levels {
		levels, err := searchLevels(o, s, out)
		if err != nil {
			return nil, err
		}
		out = append(levels, out...)
		slices.SortStableFunc(out, func(a, b Oversubscription) int { return strings.Compare(a.Path, b.Path) })
	}
	return out, nil
}

// levelFactors are the shares of its leaves' answers a domain above them is tried at, in order:
// the first that passes is its answer.
var levelFactors = []float64{1, 0.9, 0.75, 0.5, 0.25}

// searchLevels answers for every domain above the leaves, deepest first: it runs the domain's
// subtree with each leaf at its own answer times a factor, from 1 down, and takes the first
// factor at which no domain of the subtree is over its limit and no job loses more than
// allowed. Its nameplate count is its limit over the mean node's maximum under it.
func searchLevels(o Options, s SearchOptions, leaves []Oversubscription) ([]Oversubscription, error) {
	f := o.File
	best := map[string]int{}
	for _, l := range leaves {
		best[l.Path] = l.MaxNodes
	}
	paths := f.Paths()
	var out []Oversubscription
	for i := len(paths) - 1; i >= 0; i-- {
		p := paths[i]
		if f.Domains[p].Nodes > 0 {
			continue
		}
		var under []string
		nodes, maxW := 0, 0.0
		for _, l := range f.Leaves() {
			if strings.HasPrefix(l, p+"/") {
				under = append(under, l)
				d := f.Domains[l]
				m, err := sim.LookupModel(d.Model)
				if err != nil {
					return nil, err
				}
				nodes += d.Nodes
				maxW += float64(d.Nodes*d.GPUs) * m.MaxLimitW
			}
		}
		if nodes == 0 {
			continue
		}
		res := Oversubscription{Path: p, NameplateNodes: int(math.Floor(f.Domains[p].LimitW / (maxW / float64(nodes))))}
		last := -1
		for _, factor := range levelFactors {
			counts := map[string]int{}
			total := 0
			for _, l := range under {
				counts[l] = int(math.Round(factor * float64(best[l])))
				total += counts[l]
			}
			if total == 0 {
				break
			}
			if total == last {
				continue // rounding gave the trial just run
			}
			last = total
			lo := o
			lo.Subtree, lo.Nodes = p, counts
			rep, err := Run(lo)
			if err != nil {
				return nil, fmt.Errorf("searching %s at %d nodes: %w", p, total, err)
			}
			res.Runs++
			over, loss := 0.0, 0.0
			for _, d := range rep.Domains {
				over = math.Max(over, d.TimeOverLimitPct)
			}
			for _, j := range rep.Jobs {
				if j.Nodes > 0 {
					loss = math.Max(loss, 100-j.ThroughputVsUncappedPct)
				}
			}
			res.Trials = append(res.Trials, Trial{Nodes: total, ThroughputLossPct: loss, TimeOverLimitPct: over})
			if over == 0 && loss <= s.MaxLossPct {
				res.MaxNodes, res.ThroughputLossPct, res.TimeOverLimitPct = total, loss, over
				for _, l := range under {
					best[l] = counts[l]
				}
				break
			}
		}
		out = append([]Oversubscription{res}, out...)
	}
	return out, nil
}
