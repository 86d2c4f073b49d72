package simcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/cluster/fleet"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
)

// fleetJSON is what `capstan simulate fleet --json` prints.
type fleetJSON struct {
	Nodes            int                      `json:"nodes"`
	GPUs             int                      `json:"gpus"`
	Periods          int                      `json:"periods"`
	PeriodS          float64                  `json:"period_s"`
	WallS            float64                  `json:"wall_s"`
	GrantWrites      int                      `json:"grant_writes"`
	RecordWrites     int                      `json:"record_writes"`
	FastCuts         int                      `json:"fast_cuts"`
	Domains          []fleet.DomainReport     `json:"domains"`
	Jobs             []fleet.JobReport        `json:"jobs"`
	Oversubscription []fleet.Oversubscription `json:"oversubscription"`
	SearchWallS      float64                  `json:"search_wall_s"`
}

func newSimulateFleetCommand(resolve func() (*config.Config, error), stdout, stderr io.Writer) *cobra.Command {
	var (
		file           string
		duration       time.Duration
		searchDuration time.Duration
		maxLoss        float64
		search         bool
		levels         bool
		asJSON         bool
		plotPath       string
		searchPlot     string
	)
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Simulate a fleet of nodes in a power domain tree and size each domain's oversubscription",
		Long: "simulate fleet runs the nodes of --fleet.file (a domain tree whose leaves hold nodes of\n" +
			"simulated GPUs) on a simulated clock, each with the real capping controller and cluster\n" +
			"member, under one allocator's rounds (the same code as on etcd, with the records in memory),\n" +
			"and reports per domain the time over its limit, the largest overshoot and Σ draw percentiles,\n" +
			"per leaf the throughput against the same nodes uncapped and under static per-GPU caps, and,\n" +
			"per leaf, how many nodes it holds with zero time over its limit and at most --fleet.max-loss-pct\n" +
			"of throughput lost.\n\n" +
			"Fleet file:\n" +
			"  domains:\n" +
			"    site: {limit_w: 3600000}\n" +
			"    site/infer: {limit_w: 1800000}\n" +
			"    site/infer/rack1: {limit_w: 80000, nodes: 20, gpus: 8, model: H100, trace: inference, offset: 10m}\n\n" +
			"Example: capstan simulate fleet --fleet.file=fleet.yaml --duration=1h --capping.period=1s --json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := resolve()
			if err != nil {
				return err
			}
			if file == "" {
				return cli.UsageError{Err: fmt.Errorf("--fleet.file: required (a YAML file: domains: {PATH: {limit_w: W, nodes: N, gpus: G, model: M, trace: T}})")}
			}
			if duration <= 0 || duration > 31*24*time.Hour {
				return cli.UsageError{Err: fmt.Errorf("--duration: %s is out of range (allowed: more than 0 up to 744h)", duration)}
			}
			if searchDuration == 0 {
				searchDuration = duration
			}
			if searchDuration < 0 || searchDuration > 31*24*time.Hour {
				return cli.UsageError{Err: fmt.Errorf("--fleet.search-duration: %s is out of range (allowed: 0 (the --duration) up to 744h)", searchDuration)}
			}
			if math.IsNaN(maxLoss) || maxLoss < 0 || maxLoss > 100 {
				return cli.UsageError{Err: fmt.Errorf("--fleet.max-loss-pct: %v is out of range (allowed: 0 to 100)", maxLoss)}
			}
			if c.Capping.Period > duration {
				return cli.UsageError{Err: fmt.Errorf("--capping.period %s is longer than --duration %s", c.Capping.Period, duration)}
			}
			f, err := fleet.Load(file)
			if err != nil {
				return err
			}
			level := c.Log.Level
			if level == "info" {
				level = "warn"
			}
			log := agent.NewLogger(stderr, level, c.Log.Format)
			dir, err := os.MkdirTemp("", "capstan-simulate-fleet")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			set := capping.SettingsFrom(c)
			o := fleet.Options{File: f, Duration: duration, Settings: set, Seed: c.GPU.Sim.Seed, Baselines: true, StateDir: dir, Log: log}
			if c.Etcd.LeaseTTL >= set.Period {
				o.LeaseTTL = c.Etcd.LeaseTTL
			}
			rec := &fleet.Recording{}
			if plotPath != "" {
				for _, p := range f.Paths() {
					rec.Limits = append(rec.Limits, f.Domains[p].LimitW)
				}
				o.Sample = rec.Add
			}
			rep, err := fleet.Run(o)
			if err != nil {
				return err
			}
			o.Sample = nil
			if plotPath != "" {
				if err := writeFile(plotPath, "--plot", func(w io.Writer) error { return rec.WritePlot(w, rep) }); err != nil {
					return err
				}
			}
			out := fleetJSON{Nodes: rep.Nodes, GPUs: rep.GPUs, Periods: rep.Periods, PeriodS: set.Period.Seconds(), WallS: rep.Wall.Seconds(),
				GrantWrites: rep.GrantWrites, RecordWrites: rep.RecordWrites, FastCuts: rep.FastCuts, Domains: rep.Domains, Jobs: rep.Jobs, Oversubscription: []fleet.Oversubscription{}}
			if search {
				start := time.Now()
				out.Oversubscription, err = fleet.Search(o, fleet.SearchOptions{MaxLossPct: maxLoss, Duration: searchDuration, Levels: levels})
				if err != nil {
					return err
				}
				out.SearchWallS = time.Since(start).Seconds()
				if searchPlot != "" {
					write := func(w io.Writer) error { return fleet.WriteSearchPlot(w, out.Oversubscription, maxLoss) }
					if err := writeFile(searchPlot, "--fleet.search-plot", write); err != nil {
						return err
					}
				}
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			writeFleetReport(stdout, file, duration, maxLoss, out)
			return nil
		},
	}
	cmd.SetUsageFunc(fleetUsage)
	fl := cmd.Flags()
	fl.StringVar(&file, "fleet.file", "", "the fleet: a YAML file of domains (PATH: {limit_w, guard_band, priority}) whose leaves hold nodes (nodes, gpus, model, trace, offset)")
	fl.DurationVar(&duration, "duration", time.Hour, "simulated time to run")
	fl.DurationVar(&searchDuration, "fleet.search-duration", 0, "simulated time of each trial of the oversubscription search; 0 means --duration")
	fl.Float64Var(&maxLoss, "fleet.max-loss-pct", 1, "throughput loss the oversubscription search allows, in percent of the uncapped throughput")
	fl.BoolVar(&levels, "fleet.search-levels", false, "also answer for the domains above the leaves: each runs its whole subtree (costly on a large fleet)")
	fl.BoolVar(&search, "fleet.search", true, "search each leaf domain's oversubscription (--fleet.search=false skips it)")
	fl.StringVar(&plotPath, "plot", "", "draw the Σ draw of the root and of the domains that came closest to their limits, against their limits, to this PNG file")
	fl.StringVar(&searchPlot, "fleet.search-plot", "", "draw each leaf's throughput loss against its node count, from the search's trials, to this PNG file")
	fl.BoolVar(&asJSON, "json", false, "print one JSON object: nodes, gpus, periods, domains, jobs, oversubscription, writes, wall time")
	return cmd
}

// writeFleetReport prints the run for a person.
func writeFleetReport(w io.Writer, file string, duration time.Duration, maxLoss float64, r fleetJSON) {
	fmt.Fprintf(w, "%s: %d nodes, %d GPUs, %s simulated at a %gs period in %.1fs; %d grant writes, %d node record writes, %d fast cuts\n\n",
		file, r.Nodes, r.GPUs, duration, r.PeriodS, r.WallS, r.GrantWrites, r.RecordWrites, r.FastCuts)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DOMAIN\tLIMIT W\tNODES\tOVER LIMIT %\tMAX OVERSHOOT %\tDRAW P50 W\tP95 W\tP99 W\tMAX W\tOVERSUBSCRIBED %\tSTATIC OVER LIMIT %\t")
	for _, d := range r.Domains {
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%.2f\t\n", d.Path, d.LimitW, d.Nodes, d.TimeOverLimitPct, d.MaxOvershootPct,
			d.DrawP50W, d.DrawP95W, d.DrawP99W, d.DrawMaxW, d.OversubscribedPct, d.StaticTimeOverLimitPct)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "JOB (LEAF)\tTRACE\tNODES\tGPUS/NODE\tTHROUGHPUT VS UNCAPPED %\tVS STATIC CAPS %\t")
	for _, j := range r.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.2f\t%.2f\t\n", j.Domain, j.Trace, j.Nodes, j.GPUs, j.ThroughputVsUncappedPct, j.ThroughputVsStaticPct)
	}
	_ = tw.Flush()
	if len(r.Oversubscription) == 0 {
		return
	}
	fmt.Fprintf(w, "\noversubscription: the most nodes each domain holds (a leaf alone) with 0 time over its limits and at most %g %% throughput loss (searched in %.1fs)\n", maxLoss, r.SearchWallS)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DOMAIN\tNAMEPLATE NODES\tMAX NODES\tBEYOND NAMEPLATE %\tLOSS %\tTRIALS\t")
	for _, o := range r.Oversubscription {
		beyond := 0.0
		if o.NameplateNodes > 0 {
			beyond = 100 * float64(o.MaxNodes-o.NameplateNodes) / float64(o.NameplateNodes)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%d\t\n", o.Path, o.NameplateNodes, o.MaxNodes, beyond, o.ThroughputLossPct, o.Runs)
	}
	_ = tw.Flush()
}

// fleetUses are the agent's flags that change what simulate fleet does: the controllers'
// tuning, the members' lease and the GPUs' seed; the fleet file says the rest.
var fleetUses = []string{
	"config.file", "log.level", "log.format", "gpu.sim.seed", "etcd.lease-ttl",
	"capping.period", "capping.guard-band-percent", "capping.oversubscription-percent",
	"capping.headroom-watts", "capping.deadband-watts", "capping.ramp-percent",
}

// fleetUsage is simulate fleet's usage: its own flags, then the agent's flags it uses.
func fleetUsage(c *cobra.Command) error {
	shared := pflag.NewFlagSet("shared", pflag.ContinueOnError)
	inherited := c.InheritedFlags()
	for _, name := range fleetUses {
		if f := inherited.Lookup(name); f != nil {
			shared.AddFlag(f)
		}
	}
	_, err := fmt.Fprintf(c.OutOrStderr(), "Usage:\n  %s\n\nFlags:\n%s\nAgent flags simulate fleet uses (it ignores the others):\n%s",
		c.UseLine(), c.LocalFlags().FlagUsages(), shared.FlagUsages())
	return err
}
