package simulation

import (
	"encoding/csv"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Recording keeps every period of a run, for the CSV and the plots.
type Recording struct {
	GPUs    int
	Samples []Sample
}

// Add is an Options.Sample: it keeps a copy of s.
func (r *Recording) Add(s Sample) {
	s.Limits = append([]float64(nil), s.Limits...)
	r.Samples = append(r.Samples, s)
}

// WriteCSV writes one row per period: budget, measured, drawn, cap, the baselines, then each
// GPU's limit.
func (r *Recording) WriteCSV(out io.Writer) error {
	w := csv.NewWriter(out)
	head := []string{"time_s", "budget_w", "measured_w", "drawn_w", "cap_w", "static_drawn_w", "oracle_drawn_w"}
	for i := range r.GPUs {
		head = append(head, fmt.Sprintf("limit_gpu%d_w", i))
	}
	_ = w.Write(head)
	ff := func(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
	for _, s := range r.Samples {
		row := []string{strconv.FormatFloat(s.Elapsed.Seconds(), 'f', 3, 64), ff(s.BudgetW), ff(s.MeasuredW), ff(s.DrawnW), ff(s.CapW), ff(s.StaticW), ff(s.OracleW)}
		for _, l := range s.Limits {
			row = append(row, ff(l))
		}
		_ = w.Write(row)
	}
	w.Flush()
	return w.Error()
}

// WritePlot draws the run as a PNG: the node's budget, power and total cap over time above
// each GPU's limit, every legend beside its plot so that none covers a line.
func (r *Recording) WritePlot(out io.Writer, title string) error {
	return WriteFigure(out, r.figure(title))
}

func (r *Recording) figure(title string) Figure {
	xUnit := time.Minute
	if n := len(r.Samples); n > 0 && r.Samples[n-1].Elapsed <= 5*time.Minute {
		xUnit = time.Second
	}
	node := Panel{Title: title, Rec: r, Lines: []Line{
		{Name: "budget", Color: ColorBudget, Y: func(s Sample) float64 { return s.BudgetW }},
		{Name: "measured (instant)", Color: ColorDraw, Y: func(s Sample) float64 { return s.MeasuredW }},
		{Name: "total cap", Color: ColorCaps, Y: func(s Sample) float64 { return s.CapW }},
		{Name: "static B/n drawn", Color: ColorStatic, Y: func(s Sample) float64 { return s.StaticW }},
	}}
	per := Panel{Title: "Per-GPU power limits", Rec: r}
	for g := range r.GPUs {
		per.Lines = append(per.Lines, Line{Name: fmt.Sprintf("GPU %d", g), Color: gpuColor(g), Dashes: gpuDashes(g),
			Y: func(s Sample) float64 { return s.Limits[g] }})
	}
	return Figure{Width: 10 * vg.Inch, Height: 7 * vg.Inch, XUnit: xUnit, Rows: [][]Panel{{node}, {per}}}
}

// Colours shared by every figure: the same quantity has the same colour everywhere.
var (
	ColorBudget = color.RGBA{R: 200, A: 255}
	ColorDraw   = color.RGBA{B: 200, A: 255}
	ColorCaps   = color.RGBA{G: 150, A: 255}
	ColorStatic = color.RGBA{R: 150, G: 150, B: 150, A: 255}
)

// Line is one quantity of a Panel over the run's time.
type Line struct {
	Name   string
	Color  color.Color
	Dashes []vg.Length
	// Width is the line's width; zero is a thin line. A wide, light line drawn under a thin
	// one shows where two quantities are equal.
	Width vg.Length
	// Steps draws the value as held until the next sample, for quantities that jump.
	Steps bool
	Y     func(Sample) float64
}

// Panel is one plot of a Figure: Lines over the time of the run Rec, in watts, from From to To
// (zero: to the end).
type Panel struct {
	Title    string
	Rec      *Recording
	Lines    []Line
	From, To time.Duration
}

// Figure is panels on a grid. Each row shares one legend, drawn to the right of the row, and
// one power scale, so panels side by side compare at a glance.
type Figure struct {
	Width, Height vg.Length
	XUnit         time.Duration // time.Second or time.Minute
	Rows          [][]Panel
}

const (
	// dpi keeps the PNGs small; maxPlotPoints bounds the points per line (longer runs are
	// decimated evenly).
	dpi           = 96
	maxPlotPoints = 3000
	fontSize      = 11
	legendFont    = 10
)

// WriteFigure draws f as a PNG to out. The same figure gives the same bytes on every run.
func WriteFigure(out io.Writer, f Figure) error {
	img := vgimg.NewWith(vgimg.UseWH(f.Width, f.Height), vgimg.UseDPI(dpi))
	dc := draw.New(img)
	lay, err := layOut(f, dc)
	if err != nil {
		return err
	}
	for j := range lay.plots {
		for i, pl := range lay.plots[j] {
			pl.Draw(lay.canvases[j][i])
		}
		for _, l := range lay.legends[j] {
			l.Draw(draw.Canvas{Canvas: dc.Canvas, Rectangle: l.at})
		}
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(out); err != nil {
		return fmt.Errorf("writing a figure's PNG: %w", err)
	}
	return nil
}

// layout is where a figure's plots and legend columns go on its canvas.
type layout struct {
	plots    [][]*plot.Plot
	canvases [][]draw.Canvas
	legends  [][]placedLegend
}

type placedLegend struct {
	plot.Legend
	at vg.Rectangle
}

// layOut builds f's plots and places them on dc, with each row's legend columns to the right
// of the row, outside every plot.
func layOut(f Figure, dc draw.Canvas) (*layout, error) {
	if len(f.Rows) == 0 || len(f.Rows[0]) == 0 {
		return nil, errors.New("drawing a figure: no panel")
	}
	cols := len(f.Rows[0])
	tiles := draw.Tiles{Rows: len(f.Rows), Cols: cols, PadX: vg.Centimeter, PadY: vg.Centimeter / 2,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2}
	lay := &layout{plots: make([][]*plot.Plot, len(f.Rows)), legends: make([][]placedLegend, len(f.Rows))}
	columns := make([][]plot.Legend, len(f.Rows))
	legendW := vg.Length(0)
	for j, row := range f.Rows {
		if len(row) != cols {
			return nil, fmt.Errorf("drawing a figure: row %d has %d panels, row 0 has %d", j, len(row), cols)
		}
		var entries []legendEntry
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, p := range row {
			pl, es, err := p.plot(f.XUnit)
			if err != nil {
				return nil, err
			}
			lay.plots[j] = append(lay.plots[j], pl)
			entries = mergeEntries(entries, es)
			lo, hi = min(lo, pl.Y.Min), max(hi, pl.Y.Max)
		}
		for _, pl := range lay.plots[j] {
			pl.Y.Min, pl.Y.Max = lo, hi
		}
		// The tile's height does not depend on the width left for the plots.
		tile := tiles.At(dc, 0, j)
		columns[j] = legendColumns(entries, tile.Max.Y-tile.Min.Y)
		legendW = max(legendW, columnsWidth(columns[j]))
	}
	plotArea := draw.Crop(dc, 0, -(legendW + legendGap), 0, 0)
	lay.canvases = plot.Align(lay.plots, tiles, plotArea)
	for j := range columns {
		tile := tiles.At(plotArea, 0, j)
		x := plotArea.Max.X + legendGap
		for _, l := range columns[j] {
			w := columnsWidth([]plot.Legend{l})
			lay.legends[j] = append(lay.legends[j], placedLegend{Legend: l, at: vg.Rectangle{
				Min: vg.Point{X: x, Y: tile.Min.Y}, Max: vg.Point{X: x + w - legendGap, Y: tile.Max.Y - legendTop},
			}})
			x += w
		}
	}
	return lay, nil
}

type legendEntry struct {
	name  string
	thumb plot.Thumbnailer
}

// mergeEntries adds the entries of another panel of the row whose names are new.
func mergeEntries(have, more []legendEntry) []legendEntry {
next:
	for _, e := range more {
		for _, h := range have {
			if h.name == e.name {
				continue next
			}
		}
		have = append(have, e)
	}
	return have
}

// legendColumns splits entries into as many columns as it takes to fit height.
func legendColumns(entries []legendEntry, height vg.Length) []plot.Legend {
	probe := newLegend()
	probe.Add("GPU 0")
	rowH := probe.Rectangle(draw.Canvas{}).Size().Y + probe.Padding
	perCol := max(1, int((height-legendTop+probe.Padding)/rowH))
	var out []plot.Legend
	for i := 0; i < len(entries); i += perCol {
		l := newLegend()
		for _, e := range entries[i:min(i+perCol, len(entries))] {
			l.Add(e.name, e.thumb)
		}
		out = append(out, l)
	}
	return out
}

func newLegend() plot.Legend {
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.TextStyle.Font.Size = legendFont
	l.Padding = vg.Points(3)
	l.ThumbnailWidth = vg.Points(24)
	return l
}

// legendGap separates a plot from its legend and legend columns from each other; legendTop
// keeps the first entry level with the plot's title.
const (
	legendGap = 3 * vg.Millimeter
	legendTop = 4 * vg.Millimeter
)

// columnsWidth is the width the legend columns take side by side, with a gap after each.
func columnsWidth(cols []plot.Legend) vg.Length {
	w := vg.Length(0)
	for _, l := range cols {
		w += l.Rectangle(draw.Canvas{}).Size().X + legendGap
	}
	return w
}

// plot draws the panel's lines and returns the legend entries for them.
func (p Panel) plot(xUnit time.Duration) (*plot.Plot, []legendEntry, error) {
	pl := plot.New()
	pl.Title.Text = p.Title
	pl.Title.TextStyle.Font.Size = fontSize + 1
	unit := "s"
	if xUnit == time.Minute {
		unit = "min"
	}
	pl.X.Label.Text = "time (" + unit + ")"
	pl.Y.Label.Text = "power (W)"
	pl.X.Tick.Marker, pl.Y.Tick.Marker = roundTicks{}, roundTicks{}
	for _, a := range []*plot.Axis{&pl.X, &pl.Y} {
		a.Label.TextStyle.Font.Size = fontSize
		a.Tick.Label.Font.Size = fontSize - 1
	}
	pl.Add(plotter.NewGrid())
	samples := p.Rec.Samples
	if p.From > 0 || p.To > 0 {
		var in []Sample
		for _, s := range samples {
			if s.Elapsed >= p.From && (p.To == 0 || s.Elapsed <= p.To) {
				in = append(in, s)
			}
		}
		samples = in
	}
	stride := max(1, len(samples)/maxPlotPoints)
	var entries []legendEntry
	// The first line is drawn last, on top: the budget stays visible where a policy draws
	// exactly the budget.
	for i := len(p.Lines) - 1; i >= 0; i-- {
		l := p.Lines[i]
		var pts plotter.XYs
		for i := 0; i < len(samples); i += stride {
			pts = append(pts, plotter.XY{X: float64(samples[i].Elapsed) / float64(xUnit), Y: l.Y(samples[i])})
		}
		ln, err := plotter.NewLine(pts)
		if err != nil {
			return nil, nil, fmt.Errorf("drawing %q: %w", l.Name, err)
		}
		ln.Color, ln.Dashes, ln.Width = l.Color, l.Dashes, vg.Points(1.2)
		if l.Width > 0 {
			ln.Width = l.Width
		}
		if l.Steps {
			ln.StepStyle = plotter.PostStep
		}
		pl.Add(ln)
		entries = append([]legendEntry{{name: l.Name, thumb: ln}}, entries...)
	}
	pl.X.Min = float64(p.From) / float64(xUnit)
	return pl, entries, nil
}

// gpuColor and gpuDashes tell up to 64 GPUs apart: eight colours, then a dash pattern per
// group of eight.
func gpuColor(i int) color.RGBA {
	palette := []color.RGBA{
		{R: 31, G: 119, B: 180, A: 255}, {R: 255, G: 127, B: 14, A: 255}, {R: 44, G: 160, B: 44, A: 255},
		{R: 214, G: 39, B: 40, A: 255}, {R: 148, G: 103, B: 189, A: 255}, {R: 140, G: 86, B: 75, A: 255},
		{R: 227, G: 119, B: 194, A: 255}, {R: 127, G: 127, B: 127, A: 255},
	}
	return palette[i%len(palette)]
}

func gpuDashes(i int) []vg.Length {
	p := vg.Points
	patterns := [][]vg.Length{
		nil, {p(6), p(2)}, {p(2), p(2)}, {p(6), p(2), p(2), p(2)},
		{p(10), p(3)}, {p(1), p(3)}, {p(10), p(2), p(2), p(2), p(2), p(2)}, {p(4), p(4)},
	}
	return patterns[(i/8)%len(patterns)]
}

// roundTicks marks 1, 2 or 5 times a power of ten, at most eight labels, in whole numbers
// where the step allows: the default ticker writes "2500.00" and starts a minute at 10 s.
type roundTicks struct{}

func (roundTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	step := math.Pow(10, math.Floor(math.Log10((hi-lo)/8)))
	for _, m := range []float64{1, 2, 5, 10} {
		if (hi-lo)/(m*step) <= 8 {
			step *= m
			break
		}
	}
	decimals := max(0, int(-math.Floor(math.Log10(step))))
	var ticks []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', decimals, 64)})
		if minor := v + step/2; minor < hi {
			ticks = append(ticks, plot.Tick{Value: minor})
		}
	}
	return ticks
}
