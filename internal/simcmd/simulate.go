package simcmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/simulation"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/cli"
	"github.com/capstan-power/capstan/internal/config"
)

// simulateJSON is what `capstan simulate --json` prints: exactly these keys.
type simulateJSON struct {
	SettlePeriods         int     `json:"settle_periods"`
	MaxOvershootPct       float64 `json:"max_overshoot_pct"`
	TimeOverBudgetPct     float64 `json:"time_over_budget_pct"`
	ThroughputVsStaticPct float64 `json:"throughput_vs_static_pct"`
	ThroughputVsOraclePct float64 `json:"throughput_vs_oracle_pct"`
	EnergyJ               float64 `json:"energy_j"`
	// MaxRiseWps is the steepest rise of the fleet's Σ draw between two 100 ms steps.
	MaxRiseWps float64 `json:"max_rise_wps"`
	// RiseLimitCostPct is the throughput --capping.max-rise-watts-per-second cost, against the
	// same run without it; 0 when it is off.
	RiseLimitCostPct float64 `json:"rise_limit_cost_pct"`
}

func newSimulateCommand(resolve func() (*config.Config, error), stdout, stderr io.Writer) *cobra.Command {
	var (
		duration time.Duration
		steps    []string
		asJSON   bool
		csvPath  string
		plotPath string
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Run the capping controller against the simulated fleet, faster than real time, and report",
		Long: "simulate runs the real capping controller against the simulated GPU fleet (--gpu.sim.*)\n" +
			"on a simulated clock under --budget.watts, with the --capping.* tuning, and reports\n" +
			"energy, throughput, time over budget, largest overshoot and settling time after each\n" +
			"--budget.step, next to static uniform caps (budget / GPUs) and an oracle that knows\n" +
			"each GPU's demand, computed in the same run.\n\n" +
			"Example: capstan simulate --gpu.sim.trace=imbalanced --budget.watts=3360 --duration=1h --budget.step=30m:2352",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := resolve()
			if err != nil {
				return err
			}
			if err := c.CheckBudgetWatts("the node budget in watts"); err != nil {
				return err
			}
			if duration <= 0 || duration > 31*24*time.Hour {
				return cli.UsageError{Err: fmt.Errorf("--duration: %s is out of range (allowed: more than 0 up to 744h)", duration)}
			}
			parsed, err := parseSteps(steps, duration)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			// The controller's start and stop lines would only be noise around the report.
			level := c.Log.Level
			if level == "info" {
				level = "warn"
			}
			log := agent.NewLogger(stderr, level, c.Log.Format)
			dir, err := os.MkdirTemp("", "capstan-simulate")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)

			rec := &simulation.Recording{GPUs: c.GPU.Sim.Count}
			opts := simulation.Options{
				Model: c.GPU.Sim.Model, Trace: c.GPU.Sim.Trace, Count: c.GPU.Sim.Count, Seed: c.GPU.Sim.Seed,
				BudgetW: float64(c.Budget.Watts), Steps: parsed, Duration: duration,
				Settings: capping.SettingsFrom(c), StateDir: dir, Log: log,
			}
			opts.Settings.DryRun = false
			if csvPath != "" || plotPath != "" {
				opts.Sample = rec.Add
			}
			r, err := simulation.Run(opts)
			if err != nil {
				return err
			}
			// The rise limit's cost: the same run without it.
			var unlimited *simulation.Report
			if opts.Settings.MaxRiseWps > 0 {
				free := opts
				free.Settings.MaxRiseWps, free.Sample = 0, nil
				if unlimited, err = simulation.Run(free); err != nil {
					return err
				}
			}
			if csvPath != "" {
				if err := writeFile(csvPath, "--csv", rec.WriteCSV); err != nil {
					return err
				}
			}
			if plotPath != "" {
				title := fmt.Sprintf("%d × %s, trace %s, budget %d W", c.GPU.Sim.Count, c.GPU.Sim.Model, c.GPU.Sim.Trace, c.Budget.Watts)
				write := func(w io.Writer) error { return rec.WritePlot(w, title) }
				if err := writeFile(plotPath, "--plot", write); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(summarize(r, unlimited))
			}
			writeReport(stdout, c, opts, r, unlimited)
			return nil
		},
	}
	cmd.SetUsageFunc(simulateUsage)
	cmd.AddCommand(newSimulateFleetCommand(resolve, stdout, stderr))
	f := cmd.Flags()
	f.DurationVar(&duration, "duration", time.Hour, "simulated time to run")
	f.StringArrayVar(&steps, "budget.step", nil, "change the budget AT a time from the start to WATTS, as AT:WATTS (e.g. 30m:2744); repeatable")
	f.BoolVar(&asJSON, "json", false, "print one JSON object: settle_periods, max_overshoot_pct, time_over_budget_pct, throughput_vs_static_pct, throughput_vs_oracle_pct, energy_j, max_rise_wps, rise_limit_cost_pct")
	f.StringVar(&csvPath, "csv", "", "write every control period (budget, measured, cap, per-GPU limits, baselines) to this CSV file")
	f.StringVar(&plotPath, "plot", "", "draw budget, power and per-GPU limits over time to this PNG file")
	return cmd
}

// simulateUses are the agent's flags that change what simulate does. Its help lists these
// and leaves out the others (exporters, collectors, etcd, the controller's lifecycle), which
// it accepts, as a configuration file may set them, and ignores.
var simulateUses = []string{
	"config.file", "log.level", "log.format",
	"gpu.sim.model", "gpu.sim.count", "gpu.sim.trace", "gpu.sim.seed",
	"budget.watts",
	"capping.period", "capping.guard-band-percent", "capping.oversubscription-percent",
	"capping.headroom-watts", "capping.deadband-watts", "capping.ramp-percent", "capping.max-rise-watts-per-second",
	"capping.weights",
}

// simulateUsage is simulate's usage: its own flags, then the agent's flags it uses.
func simulateUsage(c *cobra.Command) error {
	shared := pflag.NewFlagSet("shared", pflag.ContinueOnError)
	inherited := c.InheritedFlags()
	for _, name := range simulateUses {
		if f := inherited.Lookup(name); f != nil {
			shared.AddFlag(f)
		}
	}
	_, err := fmt.Fprintf(c.OutOrStderr(), "Usage:\n  %s\n\nFlags:\n%s\nAgent flags simulate uses (it ignores the others):\n%s",
		c.UseLine(), c.LocalFlags().FlagUsages(), shared.FlagUsages())
	return err
}

// parseSteps reads --budget.step values AT:WATTS.
func parseSteps(values []string, duration time.Duration) ([]simulation.Step, error) {
	var out []simulation.Step
	for _, v := range values {
		at, w, ok := strings.Cut(v, ":")
		d, errD := time.ParseDuration(strings.TrimSpace(at))
		watts, errW := strconv.ParseFloat(strings.TrimSpace(w), 64)
		if !ok || errD != nil || errW != nil {
			return nil, fmt.Errorf("--budget.step: %q is not AT:WATTS (example: 30m:2744)", v)
		}
		if d <= 0 || d >= duration {
			return nil, fmt.Errorf("--budget.step: %q: AT %s is out of range (allowed: after 0, before --duration %s)", v, d, duration)
		}
		if !(watts > 0 && watts < 1e9) {
			return nil, fmt.Errorf("--budget.step: %q: WATTS %v is out of range (allowed: a positive number of watts)", v, watts)
		}
		out = append(out, simulation.Step{At: d, Watts: watts})
	}
	return out, nil
}

// riseLimitCost is the share of throughput the rise limit cost: r against the same run without
// the limit (unlimited, nil when the limit is off).
func riseLimitCost(r, unlimited *simulation.Report) float64 {
	if unlimited == nil || unlimited.Ours.Work <= 0 {
		return 0
	}
	return 100 * (1 - r.Ours.Work/unlimited.Ours.Work)
}

func summarize(r, unlimited *simulation.Report) simulateJSON {
	worst := 0
	for _, s := range r.SettlePeriods {
		if s < 0 {
			worst = -1
			break
		}
		worst = max(worst, s)
	}
	return simulateJSON{
		SettlePeriods:         worst,
		MaxOvershootPct:       round2(r.Ours.MaxOvershootPct),
		TimeOverBudgetPct:     round2(r.Ours.TimeOverBudgetPct),
		ThroughputVsStaticPct: round2(100 * r.Ours.Work / r.Static.Work),
		ThroughputVsOraclePct: round2(100 * r.Ours.Work / r.Oracle.Work),
		EnergyJ:               math.Round(r.Ours.EnergyJ),
		MaxRiseWps:            math.Round(r.Ours.MaxRiseWps),
		RiseLimitCostPct:      round2(riseLimitCost(r, unlimited)),
	}
}

func round2(x float64) float64 { return math.Round(100*x) / 100 }

func writeReport(w io.Writer, c *config.Config, o simulation.Options, r, unlimited *simulation.Report) {
	fmt.Fprintf(w, "%d × %s, trace %s, budget %d W, %s simulated at a %s period in %s\n\n",
		o.Count, o.Model, o.Trace, c.Budget.Watts, o.Duration, o.Settings.Period, r.Wall.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tenergy kWh\tthroughput GPU·h\tvs static\ttime over budget\tmax overshoot¹\t")
	row := func(name string, f simulation.Figures) {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.1f %%\t%.2f %%\t%.2f %%\t\n", name, f.EnergyJ/3.6e6, f.Work/3600,
			100*f.Work/r.Static.Work, f.TimeOverBudgetPct, f.MaxOvershootPct)
	}
	row("capstan", r.Ours)
	row("static B/n", r.Static)
	row("oracle", r.Oracle)
	tw.Flush()
	fmt.Fprintf(w, "¹ once settled: after the first %d periods (the start-up, below) and after each budget step\n"+
		"  once it settled (under the budget, then within 2 %% above it for 10 periods)\n\n", simulation.StartupPeriods)
	fmt.Fprintf(w, "start-up: up to %.2f %% over budget in the first %d periods, %s\n",
		r.Startup.OvershootPct, simulation.StartupPeriods, settled(r.Startup.SettlePeriods, o.Settings.Period))
	for i, s := range r.SettlePeriods {
		fmt.Fprintf(w, "budget step %d (%s → %.0f W): up to %.2f %% over budget, %s\n", i+1, o.Steps[i].At, o.Steps[i].Watts,
			r.StepOvershootPct[i], settled(s, o.Settings.Period))
	}
	fmt.Fprintf(w, "throughput vs oracle: %.1f %%\n", 100*r.Ours.Work/r.Oracle.Work)
	fmt.Fprintf(w, "power ramp: Σ draw rose at most %.0f W/s over %s steps (static caps %.0f W/s, oracle %.0f W/s)\n",
		r.Ours.MaxRiseWps, o.Settings.Period/time.Duration(simulation.FastSteps(o.Settings)), r.Static.MaxRiseWps, r.Oracle.MaxRiseWps)
	if unlimited != nil {
		fmt.Fprintf(w, "rise limit %.0f W/s: costs %.2f %% of throughput (steepest rise %.0f W/s without it)\n",
			o.Settings.MaxRiseWps, riseLimitCost(r, unlimited), unlimited.Ours.MaxRiseWps)
	}
}

// settled says how long a transient took to settle.
func settled(periods int, period time.Duration) string {
	if periods < 0 {
		return "did not settle"
	}
	return fmt.Sprintf("settled in %d periods (%s)", periods, time.Duration(periods)*period)
}

// writeFile creates path and has write fill it; flag names the file in errors.
func writeFile(path, flag string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing %s: %w", flag, err)
	}
	if err := errors.Join(write(f), f.Close()); err != nil {
		return fmt.Errorf("writing %s %s: %w", flag, path, err)
	}
	return nil
}
