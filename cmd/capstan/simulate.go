package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/simulation"
	"github.com/capstan-power/capstan/internal/agent"
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
			"on a simulated clock under --budget.watts, with the --capping.* settings, and reports\n" +
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
				return usageError{fmt.Errorf("--duration: %s is out of range (allowed: more than 0 up to 744h)", duration)}
			}
			parsed, err := parseSteps(steps, duration)
			if err != nil {
				return usageError{err}
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

			rec := &recorder{}
			opts := simulation.Options{
				Model: c.GPU.Sim.Model, Trace: c.GPU.Sim.Trace, Count: c.GPU.Sim.Count, Seed: c.GPU.Sim.Seed,
				BudgetW: float64(c.Budget.Watts), Steps: parsed, Duration: duration,
				Settings: capping.SettingsFrom(c), StateDir: dir, Log: log,
			}
			opts.Settings.DryRun = false
			if csvPath != "" || plotPath != "" {
				opts.Sample = rec.add
			}
			r, err := simulation.Run(opts)
			if err != nil {
				return err
			}
			if csvPath != "" {
				if err := rec.writeCSV(csvPath, c.GPU.Sim.Count); err != nil {
					return err
				}
			}
			if plotPath != "" {
				if err := rec.writePlot(plotPath, c.GPU.Sim.Count); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(summarize(r))
			}
			writeReport(stdout, c, opts, r)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&duration, "duration", time.Hour, "simulated time to run")
	f.StringArrayVar(&steps, "budget.step", nil, "change the budget AT a time from the start to WATTS, as AT:WATTS (e.g. 30m:2744); repeatable")
	f.BoolVar(&asJSON, "json", false, "print one JSON object: settle_periods, max_overshoot_pct, time_over_budget_pct, throughput_vs_static_pct, throughput_vs_oracle_pct, energy_j")
	f.StringVar(&csvPath, "csv", "", "write every control period (budget, measured, cap, per-GPU limits, baselines) to this CSV file")
	f.StringVar(&plotPath, "plot", "", "draw budget, power and per-GPU limits over time to this PNG file")
	return cmd
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

func summarize(r *simulation.Report) simulateJSON {
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
	}
}

func round2(x float64) float64 { return math.Round(100*x) / 100 }

func writeReport(w io.Writer, c *config.Config, o simulation.Options, r *simulation.Report) {
	fmt.Fprintf(w, "%d × %s, trace %s, budget %d W, %s simulated at a %s period in %s\n\n",
		o.Count, o.Model, o.Trace, c.Budget.Watts, o.Duration, o.Settings.Period, r.Wall.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tenergy kWh\tthroughput GPU·h\tvs static\tover budget\tmax overshoot\t")
	row := func(name string, f simulation.Figures) {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.1f %%\t%.2f %%\t%.2f %%\t\n", name, f.EnergyJ/3.6e6, f.Work/3600,
			100*f.Work/r.Static.Work, f.TimeOverBudgetPct, f.MaxOvershootPct)
	}
	row("capstan", r.Ours)
	row("static B/n", r.Static)
	row("oracle", r.Oracle)
	tw.Flush()
	fmt.Fprintf(w, "\nthroughput vs oracle: %.1f %%\n", 100*r.Ours.Work/r.Oracle.Work)
	for i, s := range r.SettlePeriods {
		if s < 0 {
			fmt.Fprintf(w, "budget step %d (%s → %.0f W): did not settle\n", i+1, o.Steps[i].At, o.Steps[i].Watts)
			continue
		}
		fmt.Fprintf(w, "budget step %d (%s → %.0f W): settled in %d periods\n", i+1, o.Steps[i].At, o.Steps[i].Watts, s)
	}
}

// recorder keeps every period for the CSV and the plot.
type recorder struct{ samples []simulation.Sample }

func (r *recorder) add(s simulation.Sample) {
	s.Limits = append([]float64(nil), s.Limits...)
	r.samples = append(r.samples, s)
}

func (r *recorder) writeCSV(path string, gpus int) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing --csv: %w", err)
	}
	w := csv.NewWriter(f)
	head := []string{"time_s", "budget_w", "measured_w", "drawn_w", "cap_w", "static_drawn_w", "oracle_drawn_w"}
	for i := range gpus {
		head = append(head, fmt.Sprintf("limit_gpu%d_w", i))
	}
	_ = w.Write(head)
	ff := func(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
	for _, s := range r.samples {
		row := []string{strconv.FormatFloat(s.Elapsed.Seconds(), 'f', 3, 64), ff(s.BudgetW), ff(s.MeasuredW), ff(s.DrawnW), ff(s.CapW), ff(s.StaticW), ff(s.OracleW)}
		for _, l := range s.Limits {
			row = append(row, ff(l))
		}
		_ = w.Write(row)
	}
	w.Flush()
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		return fmt.Errorf("writing --csv %s: %w", path, err)
	}
	return nil
}

// maxPlotPoints bounds the points per line; longer runs are decimated evenly.
const maxPlotPoints = 3000

func (r *recorder) writePlot(path string, gpus int) error {
	stride := max(1, len(r.samples)/maxPlotPoints)
	xs := func(val func(simulation.Sample) float64) plotter.XYs {
		var pts plotter.XYs
		for i := 0; i < len(r.samples); i += stride {
			s := r.samples[i]
			pts = append(pts, plotter.XY{X: s.Elapsed.Minutes(), Y: val(s)})
		}
		return pts
	}
	node := plot.New()
	node.Title.Text = "Node power"
	node.X.Label.Text = "minutes"
	node.Y.Label.Text = "W"
	node.Legend.Top = true
	lines := []struct {
		name string
		val  func(simulation.Sample) float64
		c    color.RGBA
	}{
		{"budget", func(s simulation.Sample) float64 { return s.BudgetW }, color.RGBA{R: 200, A: 255}},
		{"measured", func(s simulation.Sample) float64 { return s.MeasuredW }, color.RGBA{B: 200, A: 255}},
		{"total cap", func(s simulation.Sample) float64 { return s.CapW }, color.RGBA{G: 150, A: 255}},
		{"static B/n drawn", func(s simulation.Sample) float64 { return s.StaticW }, color.RGBA{R: 150, G: 150, B: 150, A: 255}},
	}
	for _, l := range lines {
		ln, err := plotter.NewLine(xs(l.val))
		if err != nil {
			return fmt.Errorf("drawing --plot: %w", err)
		}
		ln.Color = l.c
		node.Add(ln)
		node.Legend.Add(l.name, ln)
	}
	per := plot.New()
	per.Title.Text = "Per-GPU power limits"
	per.X.Label.Text = "minutes"
	per.Y.Label.Text = "W"
	per.Legend.Top = true
	per.Legend.Left = true
	for g := range gpus {
		ln, err := plotter.NewLine(xs(func(s simulation.Sample) float64 { return s.Limits[g] }))
		if err != nil {
			return fmt.Errorf("drawing --plot: %w", err)
		}
		ln.Color = gpuColor(g)
		per.Add(ln)
		per.Legend.Add(fmt.Sprintf("GPU %d", g), ln)
	}
	img := vgimg.New(12*vg.Inch, 9*vg.Inch)
	dc := draw.New(img)
	canvases := plot.Align([][]*plot.Plot{{node}, {per}}, draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Centimeter}, dc)
	node.Draw(canvases[0][0])
	per.Draw(canvases[1][0])
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing --plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing --plot %s: %w", path, err)
	}
	return f.Close()
}

func gpuColor(i int) color.RGBA {
	palette := []color.RGBA{
		{R: 31, G: 119, B: 180, A: 255}, {R: 255, G: 127, B: 14, A: 255}, {R: 44, G: 160, B: 44, A: 255},
		{R: 214, G: 39, B: 40, A: 255}, {R: 148, G: 103, B: 189, A: 255}, {R: 140, G: 86, B: 75, A: 255},
		{R: 227, G: 119, B: 194, A: 255}, {R: 127, G: 127, B: 127, A: 255},
	}
	return palette[i%len(palette)]
}
