package agent

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/capstan-power/capstan/capping"
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

func TestSummaryTable(t *testing.T) {
	store := sample.NewStore()
	var out bytes.Buffer
	writeSummary(&out, store, time.Unix(0, 0).UTC())
	if !strings.Contains(out.String(), "no GPU data yet") {
		t.Errorf("empty store: %q", out.String())
	}
	store.Put("gpu", gpuBatch(11))
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
