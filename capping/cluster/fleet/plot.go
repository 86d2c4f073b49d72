package fleet

import (
	"fmt"
	"image/color"
	"io"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/capstan-power/capstan/capping/simulation"
)

// Recording keeps every period's Σ draw of each domain of a run, for its plot.
type Recording struct {
	Paths  []string
	Limits []float64
	recs   []*simulation.Recording
}

// Add is an Options.Sample.
func (r *Recording) Add(elapsed time.Duration, drawW []float64) {
	if r.recs == nil {
		r.recs = make([]*simulation.Recording, len(drawW))
		for i := range r.recs {
			r.recs[i] = &simulation.Recording{}
		}
	}
	for i, w := range drawW {
		lim := 0.0
		if i < len(r.Limits) {
			lim = r.Limits[i]
		}
		r.recs[i].Samples = append(r.recs[i].Samples, simulation.Sample{Elapsed: elapsed, BudgetW: lim, DrawnW: w})
	}
}

// maxPanels bounds the domains one figure shows: the root, then those that came closest to
// their limits.
const maxPanels = 6

// WritePlot draws each domain's Σ draw against its limit over the run (the root and the
// domains whose draw came closest to their limits) as a PNG, with the project's figure layout.
func (r *Recording) WritePlot(out io.Writer, rep *Report) error {
	if len(r.recs) == 0 {
		return fmt.Errorf("no periods recorded to plot")
	}
	order := make([]int, 0, len(rep.Domains))
	for i := 1; i < len(rep.Domains); i++ {
		order = append(order, i)
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ra, rb := rep.Domains[a].DrawMaxW/rep.Domains[a].LimitW, rep.Domains[b].DrawMaxW/rep.Domains[b].LimitW
		switch {
		case ra > rb:
			return -1
		case ra < rb:
			return 1
		}
		return 0
	})
	order = append([]int{0}, order[:min(len(order), maxPanels-1)]...)
	xUnit := time.Minute
	if n := len(r.recs[0].Samples); n > 0 && r.recs[0].Samples[n-1].Elapsed <= 5*time.Minute {
		xUnit = time.Second
	}
	var rows [][]simulation.Panel
	for _, d := range order {
		p := simulation.Panel{Title: fmt.Sprintf("%s: Σ draw of %d nodes against its limit", rep.Domains[d].Path, rep.Domains[d].Nodes), Rec: r.recs[d],
			Lines: []simulation.Line{
				{Name: "limit", Color: simulation.ColorBudget, Steps: true, Y: func(s simulation.Sample) float64 { return s.BudgetW }},
				{Name: "Σ draw", Color: simulation.ColorDraw, Y: func(s simulation.Sample) float64 { return s.DrawnW }},
			}}
		rows = append(rows, []simulation.Panel{p})
	}
	return simulation.WriteFigure(out, simulation.Figure{Width: 10 * vg.Inch, Height: vg.Length(2.2*float64(len(rows))+0.6) * vg.Inch, XUnit: xUnit, Rows: rows})
}

// WriteSearchPlot draws each leaf's throughput loss against its node count, from the search's
// trials, as a PNG: a dashed line marks the allowed loss, a cross a trial over the limit.
func WriteSearchPlot(out io.Writer, res []Oversubscription, maxLossPct float64) error {
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("Throughput loss against node count (allowed: %g %%, no time over the limit)", maxLossPct)
	pl.X.Label.Text = "nodes in the domain"
	pl.Y.Label.Text = "throughput loss vs uncapped (%)"
	pl.Add(plotter.NewGrid())
	palette := []color.RGBA{{R: 31, G: 119, B: 180, A: 255}, {R: 255, G: 127, B: 14, A: 255}, {R: 44, G: 160, B: 44, A: 255},
		{R: 214, G: 39, B: 40, A: 255}, {R: 148, G: 103, B: 189, A: 255}, {R: 140, G: 86, B: 75, A: 255}}
	xMax := 1.0
	for i, o := range res {
		trials := slices.Clone(o.Trials)
		slices.SortFunc(trials, func(a, b Trial) int { return a.Nodes - b.Nodes })
		var pts, over plotter.XYs
		for _, t := range trials {
			pts = append(pts, plotter.XY{X: float64(t.Nodes), Y: t.ThroughputLossPct})
			if t.TimeOverLimitPct > 0 {
				over = append(over, plotter.XY{X: float64(t.Nodes), Y: t.ThroughputLossPct})
			}
			xMax = max(xMax, float64(t.Nodes))
		}
		if len(pts) == 0 {
			continue
		}
		c := palette[i%len(palette)]
		ln, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		ln.Color, sc.Color = c, c
		pl.Add(ln, sc)
		pl.Legend.Add(fmt.Sprintf("%s (nameplate %d, holds %d)", o.Path, o.NameplateNodes, o.MaxNodes), ln)
		if len(over) > 0 {
			x, err := plotter.NewScatter(over)
			if err != nil {
				return err
			}
			x.Shape, x.Color, x.Radius = draw.CrossGlyph{}, color.RGBA{R: 200, A: 255}, vg.Points(5)
			pl.Add(x)
		}
	}
	allowed, err := plotter.NewLine(plotter.XYs{{X: 0, Y: maxLossPct}, {X: xMax, Y: maxLossPct}})
	if err != nil {
		return err
	}
	allowed.Dashes, allowed.Color = []vg.Length{vg.Points(4), vg.Points(3)}, simulation.ColorBudget
	pl.Add(allowed)
	pl.Legend.Add("allowed loss", allowed)
	pl.Legend.Top, pl.Legend.Left = true, true
	img := vgimg.NewWith(vgimg.UseWH(10*vg.Inch, 6*vg.Inch), vgimg.UseDPI(96))
	pl.Draw(draw.New(img))
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(out); err != nil {
		return fmt.Errorf("writing the search plot: %w", err)
	}
	return nil
}
