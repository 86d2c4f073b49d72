package simulation

import (
	"bytes"
	"fmt"
	"image/png"
	"math"
	"testing"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// recording makes a run of gpus GPUs without simulating one: the layout depends on the lines'
// names and the figure's size, not on the values.
func recording(gpus int) *Recording {
	r := &Recording{GPUs: gpus}
	for k := 1; k <= 120; k++ {
		s := Sample{Elapsed: time.Duration(k) * time.Second, BudgetW: 300 * float64(gpus), MeasuredW: 290 * float64(gpus),
			CapW: 300 * float64(gpus), StaticW: 280 * float64(gpus)}
		for g := range gpus {
			s.Limits = append(s.Limits, 200+float64((k*7+g*13)%500))
		}
		r.Samples = append(r.Samples, s)
	}
	return r
}

// Every legend column of the --plot figure lies outside every plot's data area and inside the
// image, and holds its entries, from 1 to 64 GPUs: no legend covers a line.
func TestPlotLegendsBesideThePlots(t *testing.T) {
	for _, gpus := range []int{1, 8, 16, 33, 64} {
		t.Run(fmt.Sprint(gpus, " GPUs"), func(t *testing.T) {
			f := recording(gpus).figure("test")
			dc := draw.New(vgimg.NewWith(vgimg.UseWH(f.Width, f.Height), vgimg.UseDPI(dpi)))
			lay, err := layOut(f, dc)
			if err != nil {
				t.Fatal(err)
			}
			entries := 0
			for j := range lay.legends {
				for _, l := range lay.legends[j] {
					if l.at.Min.X < dc.Min.X || l.at.Max.X > dc.Max.X || l.at.Min.Y < dc.Min.Y || l.at.Max.Y > dc.Max.Y {
						t.Errorf("legend column at %v leaves the image %v", l.at, dc.Rectangle)
					}
					need := l.Rectangle(draw.Canvas{Rectangle: l.at}).Size()
					if need.Y > l.at.Size().Y || need.X > l.at.Size().X {
						t.Errorf("legend column needs %v, has %v", need, l.at.Size())
					}
					for jj := range lay.plots {
						for i, pl := range lay.plots[jj] {
							if data := pl.DataCanvas(lay.canvases[jj][i]).Rectangle; overlap(data, l.at) {
								t.Errorf("legend column at %v covers the data area %v of plot %d,%d", l.at, data, jj, i)
							}
						}
					}
					entries += entriesIn(l.Legend)
				}
			}
			if entries != 4+gpus {
				t.Errorf("legends hold %d entries, want %d (4 node lines and one per GPU)", entries, 4+gpus)
			}
		})
	}
}

// entriesIn counts a legend's entries from its height: n entries and n − 1 paddings.
func entriesIn(l plot.Legend) int {
	one := newLegend()
	one.Add("GPU 0")
	entryH := one.Rectangle(draw.Canvas{}).Size().Y
	return int(math.Round(float64((l.Rectangle(draw.Canvas{}).Size().Y + l.Padding) / (entryH + l.Padding))))
}

func overlap(a, b vg.Rectangle) bool {
	return a.Min.X < b.Max.X && b.Min.X < a.Max.X && a.Min.Y < b.Max.Y && b.Min.Y < a.Max.Y
}

// The --plot PNG decodes, at the size the figure asks for.
func TestWritePlotIsAPNG(t *testing.T) {
	var b bytes.Buffer
	if err := recording(8).WritePlot(&b, "8 GPUs"); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds().Dx(); got != 960 {
		t.Errorf("width %d px, want 960 (10 in at 96 dpi)", got)
	}
}
