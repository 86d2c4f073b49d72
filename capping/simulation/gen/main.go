// Command gen draws the pictures of docs/capping.md from simulated runs: a budget step, and a
// lock-step training job and an imbalanced one under static caps beside Capstan. The runs are
// on a simulated clock with fixed seeds, so the same code gives the same bytes; `make docs`
// runs it and CI checks that the committed PNGs are current. The picture of
// docs/cluster-budget.md is drawn from a committed recording of a group on a real etcd
// (testdata/cluster-cut.csv, see TestRecordClusterCut), which no clock of ours drives.
package main

import (
	"bytes"
	_ "embed"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot/vg"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/simulation"
)

func main() {
	dir := flag.String("o", "docs", "directory to write the PNGs to")
	flag.Parse()
	for name, draw := range pictures {
		png, err := draw()
		if err == nil {
			err = os.WriteFile(filepath.Join(*dir, name), png, 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "drawing %s: %v\n", name, err)
			os.Exit(1)
		}
	}
}

// pictures are the PNGs this command writes, by file name.
var pictures = map[string]func() ([]byte, error){
	"capping-step.png":     budgetStep,
	"capping-policies.png": policies,
	"cluster-budget.png":   clusterCut,
}

// run simulates count H100s on trace under budgetW, recording every period.
func run(trace string, count int, budgetW float64, d time.Duration, steps ...simulation.Step) (*simulation.Recording, *simulation.Report, error) {
	dir, err := os.MkdirTemp("", "capstan-docs")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	rec := &simulation.Recording{GPUs: count}
	r, err := simulation.Run(simulation.Options{Model: "H100", Trace: trace, Count: count, Seed: 1, BudgetW: budgetW,
		Steps: steps, Duration: d, Settings: capping.Defaults(), StateDir: dir, Sample: rec.Add})
	return rec, r, err
}

// The lines of every panel: the budget, what the GPUs drew and what they may draw (Σ of their
// limits), wide and light under the others, which often equal it.
func capstanLines() []simulation.Line {
	return lines(func(s simulation.Sample) float64 { return sum(s.Limits) }, func(s simulation.Sample) float64 { return s.DrawnW })
}

func staticLines() []simulation.Line {
	return lines(func(s simulation.Sample) float64 { return s.StaticCapW }, func(s simulation.Sample) float64 { return s.StaticW })
}

func lines(limits, drawn func(simulation.Sample) float64) []simulation.Line {
	return []simulation.Line{
		{Name: "budget", Color: simulation.ColorBudget, Y: func(s simulation.Sample) float64 { return s.BudgetW }},
		{Name: "Σ GPU draw", Color: simulation.ColorDraw, Y: drawn},
		{Name: "Σ GPU limits", Color: limitsColor, Width: vg.Points(5), Y: limits},
	}
}

var limitsColor = color.RGBA{R: 120, G: 210, B: 120, A: 255}

// budgetStep is 8 H100s at steady load whose budget is cut by 30 % after a minute.
func budgetStep() ([]byte, error) {
	rec, r, err := run("steady", 8, 4400, 2*time.Minute, simulation.Step{At: time.Minute, Watts: 3080})
	if err != nil {
		return nil, err
	}
	title := fmt.Sprintf("Capstan, 8 × H100, steady load: budget cut by 30 %% at 60 s, settled in %d periods of 1 s", r.SettlePeriods[0])
	return draw(simulation.Figure{Width: 9 * vg.Inch, Height: 3.6 * vg.Inch, XUnit: time.Second,
		Rows: [][]simulation.Panel{{{Title: title, Rec: rec, Lines: capstanLines()}}}})
}

// policies puts static caps beside Capstan on a lock-step training job and on an imbalanced
// one, both at 70 % of the GPUs' Σ maximum.
func policies() ([]byte, error) {
	var rows [][]simulation.Panel
	for _, job := range []struct{ trace, what string }{
		{"training", "lock-step training"},
		{"imbalanced", "imbalanced job"},
	} {
		rec, r, err := run(job.trace, 8, 3920, 2*time.Minute)
		if err != nil {
			return nil, err
		}
		rows = append(rows, []simulation.Panel{
			{Title: fmt.Sprintf("static caps B/n, %s: throughput 100 %%", job.what), Rec: rec, Lines: staticLines()},
			{Title: fmt.Sprintf("Capstan, %s: throughput %.1f %% of static", job.what, 100*r.Ours.Work/r.Static.Work), Rec: rec, Lines: capstanLines()},
		})
	}
	return draw(simulation.Figure{Width: 11 * vg.Inch, Height: 6.5 * vg.Inch, XUnit: time.Second, Rows: rows})
}

func draw(f simulation.Figure) ([]byte, error) {
	var b bytes.Buffer
	err := simulation.WriteFigure(&b, f)
	return b.Bytes(), err
}

func sum(xs []float64) float64 {
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t
}

// clusterRecording is four nodes of a group on a real etcd: time_s, budget_w, then each
// node's grant and applied watts.
//
//go:embed testdata/cluster-cut.csv
var clusterRecording string

// clusterCut draws the recording: every grant over the whole run, then the join close up,
// where the two phases show.
func clusterCut() ([]byte, error) {
	rows, err := csv.NewReader(strings.NewReader(clusterRecording)).ReadAll()
	if err != nil || len(rows) < 2 || len(rows[0]) < 4 {
		return nil, errors.Join(errors.New("reading testdata/cluster-cut.csv: not time_s, budget_w and node columns"), err)
	}
	rec := &simulation.Recording{}
	for _, row := range rows[1:] {
		var v []float64
		for _, cell := range row {
			x, err := strconv.ParseFloat(cell, 64)
			if err != nil {
				return nil, fmt.Errorf("reading testdata/cluster-cut.csv: %w", err)
			}
			v = append(v, x)
		}
		rec.Samples = append(rec.Samples, simulation.Sample{Elapsed: time.Duration(v[0] * float64(time.Second)), BudgetW: v[1], Limits: v[2:]})
	}
	budget := simulation.Line{Name: "group budget", Color: simulation.ColorBudget, Steps: true, Y: func(s simulation.Sample) float64 { return s.BudgetW }}
	all := []simulation.Line{budget}
	var close []simulation.Line
	for n := 0; 2+2*n < len(rows[0]); n++ {
		node := strings.TrimSuffix(rows[0][2+2*n], "_grant_w")
		grant := func(s simulation.Sample) float64 { return s.Limits[2*n] }
		applied := func(s simulation.Sample) float64 { return s.Limits[2*n+1] }
		all = append(all, simulation.Line{Name: node + " grant", Color: nodeColors[n%len(nodeColors)], Steps: true, Y: grant})
		close = append(close,
			simulation.Line{Name: node + " grant", Color: nodeColors[n%len(nodeColors)], Width: vg.Points(4), Steps: true, Y: grant},
			simulation.Line{Name: node + " applied", Color: color.Black, Dashes: []vg.Length{vg.Points(3), vg.Points(2)}, Steps: true, Y: applied})
	}
	// The close-up shows the grants as wide lines and what each node applied as a dashed black
	// line on top; node-d is the joiner.
	return draw(simulation.Figure{Width: 9 * vg.Inch, Height: 7 * vg.Inch, XUnit: time.Second, Rows: [][]simulation.Panel{
		{{Title: "Grants of a group of four nodes on etcd: budget cut 5000 → 4000 W at 6 s, node-d joins at 11 s", Rec: rec, Lines: all}},
		{{Title: "node-d joins, close up: the others' decreases first, node-d's increase once they are applied", Rec: rec, Lines: close,
			From: 10900 * time.Millisecond, To: 11400 * time.Millisecond}},
	}})
}

var nodeColors = []color.RGBA{{R: 31, G: 119, B: 180, A: 255}, {R: 255, G: 127, B: 14, A: 255}, {R: 44, G: 160, B: 44, A: 255}, {R: 148, G: 103, B: 189, A: 255}}
