package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/collectors/gpu"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

func gpuBatch(n int) *sample.Batch {
	b := &sample.Batch{}
	b.Reset("gpu", time.Unix(0, 0))
	for i := range n {
		base := sample.NewSeries(nil, attribute.Int(metrics.AttrGPUIndex, i), attribute.String(metrics.AttrHWName, "H100"))
		b.Add(base.With(metrics.GPUPowerInstant), float64(100+i))
		b.Add(base.With(metrics.GPUPowerLimit, attribute.String(metrics.AttrLimitKind, "enforced")), 700)
		b.Add(base.With(metrics.GPUPowerLimit, attribute.String(metrics.AttrLimitKind, "max")), 999)
		b.Add(base.With(metrics.HWTemperature, attribute.String(metrics.AttrSensorLocation, "gpu")), 70)
		b.Add(base.With(metrics.GPUClock, attribute.String(metrics.AttrClockDomain, "sm")), 1980e6)
		b.Add(base.With(metrics.GPUUtilization, attribute.String(metrics.AttrGPUTask, "general")), 0.5)
	}
	return b
}

// withAveragePower adds every GPU's 1 s average power (hw.power), as the GPU collector reports it
// beside the instant power.
func withAveragePower(b *sample.Batch, n int, watts func(i int) float64) *sample.Batch {
	for i := range n {
		base := sample.NewSeries(nil, attribute.Int(metrics.AttrGPUIndex, i), attribute.String(metrics.AttrHWName, "H100"))
		b.Add(base.With(metrics.HWPower), watts(i))
	}
	return b
}

func TestSummaryTable(t *testing.T) {
	store := sample.NewStore()
	var out bytes.Buffer
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	if !strings.Contains(out.String(), "no GPU data yet") {
		t.Errorf("empty store: %q", out.String())
	}
	store.Put("gpu", withAveragePower(gpuBatch(11), 11, func(i int) float64 { return float64(100 + i) }))
	out.Reset()
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// time, header, 11 GPUs, total
	if len(lines) != 14 {
		t.Fatalf("summary has %d lines, want 14:\n%s", len(lines), out.String())
	}
	if f := strings.Fields(lines[2]); f[0] != "0" || f[1] != "100" || f[2] != "700" || f[3] != "70" || f[4] != "1980" || f[5] != "50" {
		t.Errorf("GPU 0 row %q, want 0 100 700 70 1980 50", lines[2])
	}
	if f := strings.Fields(lines[12]); f[0] != "10" {
		t.Errorf("rows not in GPU index order: %q", lines[12])
	}
	if f := strings.Fields(lines[13]); f[0] != "all" || f[1] != "1155" || f[2] != "7700" {
		t.Errorf("total row %q, want all 1155 7700", lines[13])
	}
}

// With capping on, the summary ends with what the loop steers to.
func TestSummaryCappingLine(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", gpuBatch(2))
	var out bytes.Buffer
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	if strings.Contains(out.String(), "capping:") {
		t.Fatalf("capping line without a capping loop:\n%s", out.String())
	}
	b := &sample.Batch{}
	b.Reset(capping.StoreKey, time.Unix(0, 0))
	b.Add(sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, "etcd")), 3920)
	b.Add(sample.NewSeries(metrics.CappingSetpoint), 3802.4)
	b.Add(sample.NewSeries(metrics.CappingMeasured), 3700.6)
	b.Add(sample.NewSeries(metrics.CappingMode, attribute.String(metrics.AttrCappingMode, "failsafe")), 0)
	b.Add(sample.NewSeries(metrics.CappingMode, attribute.String(metrics.AttrCappingMode, "active")), 1)
	store.Put(capping.StoreKey, b)
	out.Reset()
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	want := "capping: budget 3920 W (etcd), setpoint 3802 W, measured 3701 W, mode active\n"
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("summary ends\n%q\nwant it to end\n%q", out.String(), want)
	}
}

func TestSnapshotJSONIsStableAndComplete(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", gpuBatch(11))
	res := resource.NewSchemaless(attribute.String("service.name", "capstan"))
	points := Snapshot(store, res)
	if len(points) != 66 {
		t.Fatalf("%d points, want 66", len(points))
	}
	var buf bytes.Buffer
	if err := WriteJSON(&buf, points); err != nil {
		t.Fatal(err)
	}
	var decoded []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "unit", "type", "value", "attributes", "resource"} {
		if _, ok := decoded[0][k]; !ok {
			t.Errorf("JSON element lacks %q: %v", k, decoded[0])
		}
	}
	// Sorted by name, then attributes with numbers in numeric order.
	var idx []string
	for _, p := range points {
		if p.Name == metrics.GPUPowerInstant.Name {
			idx = append(idx, p.Attributes[metrics.AttrGPUIndex])
		}
	}
	if strings.Join(idx, ",") != "0,1,2,3,4,5,6,7,8,9,10" {
		t.Errorf("GPU order %v", idx)
	}
	if points[0].Name > points[len(points)-1].Name {
		t.Error("not sorted by name")
	}
	var table bytes.Buffer
	if err := WriteTable(&table, points); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`capstan\.gpu\.clock\s+1980000000\s+Hz\s`).MatchString(table.String()) {
		t.Errorf("table does not print whole numbers whole:\n%s", table.String())
	}
}

// cappingBatch is what the capping loop publishes: budget, setpoint, measured instant power and
// mode.
func cappingBatch(measuredW float64) *sample.Batch {
	b := &sample.Batch{}
	b.Reset(capping.StoreKey, time.Unix(0, 0))
	b.Add(sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, "static")), 1400)
	b.Add(sample.NewSeries(metrics.CappingSetpoint), 1358)
	b.Add(sample.NewSeries(metrics.CappingMeasured), measuredW)
	b.Add(sample.NewSeries(metrics.CappingMode, attribute.String(metrics.AttrCappingMode, "active")), 1)
	return b
}

// The screen says which power is which: the table shows the 1 s average (not the instant power
// the GPU collector also stores), the capping line the instant power the loop closed on; and a
// GPU above its limit is marked with a note on why, only when one is.
func TestSummarySaysWhichPowerAndMarksPowerAboveLimit(t *testing.T) {
	const legend = "00:00:00  POWER: 1 s average, as nvidia-smi shows; capping measured: instant power, summed at its last period\n"
	for _, tc := range []struct {
		name string
		avgW func(i int) float64
		want string
	}{
		{
			name: "under the limits",
			avgW: func(i int) float64 { return 650 - float64(i) },
			want: "\n" + legend +
				"  GPU  POWER W   LIMIT W  TEMP °C  SM MHz  UTIL %\n" +
				"    0      650       700       70    1980      50\n" +
				"    1      649       700       70    1980      50\n" +
				"  all     1299      1400                         \n" +
				"capping: budget 1400 W (static), setpoint 1358 W, measured 203 W, mode active\n",
		},
		{
			// 700.4 W prints as 700: no marker beside two equal numbers.
			name: "GPU 1 above its limit",
			avgW: func(i int) float64 { return []float64{700.4, 731}[i] },
			want: "\n" + legend +
				"  GPU  POWER W   LIMIT W  TEMP °C  SM MHz  UTIL %\n" +
				"    0      700       700       70    1980      50\n" +
				"    1      731*      700       70    1980      50\n" +
				"  all     1431      1400                         \n" +
				"* power above limit: the 1 s average lags a limit cut and settles within about 2 s; longer means the limit is not holding\n" +
				"capping: budget 1400 W (static), setpoint 1358 W, measured 203 W, mode active\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := sample.NewStore()
			// Instant power (100 and 101 W) differs from the average on purpose.
			store.Put("gpu", withAveragePower(gpuBatch(2), 2, tc.avgW))
			store.Put(capping.StoreKey, cappingBatch(203))
			var out bytes.Buffer
			writeSummary(&out, store, time.Unix(0, 0).UTC())
			if out.String() != tc.want {
				t.Errorf("summary\n%s\nwant\n%s", out.String(), tc.want)
			}
		})
	}
}

// Without a capping loop the legend says only what the table's power is.
func TestSummaryLegendWithoutCapping(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", withAveragePower(gpuBatch(1), 1, func(int) float64 { return 300 }))
	var out bytes.Buffer
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	if first := strings.Split(strings.TrimSpace(out.String()), "\n")[0]; first != "00:00:00  POWER: 1 s average, as nvidia-smi shows" {
		t.Errorf("first line %q", first)
	}
}

// Over the simulated fleet and the real GPU collector: a limit cut leaves the 1 s average above
// the new limit for a moment, which the screen marks and explains, and within the 2 s the note
// promises the mark is gone.
func TestSummaryMarksTheAverageLaggingACut(t *testing.T) {
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 2, Trace: "steady", Seed: 7, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	c, err := gpu.New(fleet, slog.New(slog.NewTextHandler(io.Discard, nil)), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	store := sample.NewStore()
	screen := func() string {
		b := &sample.Batch{}
		b.Reset("gpu", clk.Now())
		if err := c.Collect(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		store.Put("gpu", b)
		var out bytes.Buffer
		writeSummary(&out, store, clk.Now())
		return out.String()
	}
	clk.Advance(5 * time.Second)
	if s := screen(); strings.Contains(s, "*") {
		t.Fatalf("marked before any cut:\n%s", s)
	}
	if ret := fleet.GPU(0).SetPowerManagementLimit(300_000); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	clk.Advance(300 * time.Millisecond)
	s := screen()
	if !strings.Contains(s, "* power above limit") || !regexp.MustCompile(`(?m)^\s+0\s+\d+\*\s+300\s`).MatchString(s) {
		t.Errorf("300 ms after cutting GPU 0 to 300 W: want it marked with the note:\n%s", s)
	}
	if regexp.MustCompile(`(?m)^\s+1\s+\d+\*`).MatchString(s) {
		t.Errorf("GPU 1 was not cut but is marked:\n%s", s)
	}
	clk.Advance(2 * time.Second)
	if s := screen(); strings.Contains(s, "*") {
		t.Errorf("2 s after the cut still marked:\n%s", s)
	}
}
