package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// DataPoint is one point as `capstan collect --json` prints it.
type DataPoint struct {
	Name       string            `json:"name"`
	Unit       string            `json:"unit"`
	Type       string            `json:"type"`
	Value      float64           `json:"value"`
	Attributes map[string]string `json:"attributes"`
	Resource   map[string]string `json:"resource"`
}

// Snapshot returns every point in the store, sorted by name and attributes so that output is
// stable (golden files diff cleanly).
func Snapshot(store *sample.Store, res *resource.Resource) []DataPoint {
	resAttrs := attrMap(res.Set())
	var out []DataPoint
	store.Each(func(b *sample.Batch) {
		for _, p := range b.Points {
			d := p.Series.Def
			out = append(out, DataPoint{
				Name: d.Name, Unit: d.Unit, Type: d.Kind.String(), Value: p.Value,
				Attributes: attrMap(&p.Series.Attrs), Resource: resAttrs,
			})
		}
	})
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return attrKey(out[i].Attributes) < attrKey(out[j].Attributes)
	})
	return out
}

func attrMap(set *attribute.Set) map[string]string {
	m := make(map[string]string, set.Len())
	for it := set.Iter(); it.Next(); {
		kv := it.Attribute()
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func attrKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		// Zero-pad numbers so gpu.index 10 sorts after 9.
		v := m[k]
		if len(v) < 6 && strings.Trim(v, "0123456789") == "" {
			v = strings.Repeat("0", 6-len(v)) + v
		}
		sb.WriteString(k + "=" + v + ",")
	}
	return sb.String()
}

// WriteJSON prints points as a JSON array.
func WriteJSON(w io.Writer, points []DataPoint) error {
	if points == nil {
		points = []DataPoint{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(points)
}

// WriteTable prints points as an aligned table, one point a line.
func WriteTable(w io.Writer, points []DataPoint) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tUNIT\tATTRIBUTES")
	for _, p := range points {
		keys := make([]string, 0, len(p.Attributes))
		for k := range p.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + p.Attributes[k]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, formatValue(p.Value), p.Unit, strings.Join(parts, " "))
	}
	return tw.Flush()
}

func formatValue(v float64) string {
	if v == float64(int64(v)) && v < 1e15 && v > -1e15 {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.4g", v)
}

// gpuRow is one line of the terminal summary.
type gpuRow struct {
	index                          int64
	name                           string
	power, limit, temp, clock, use float64
}

// overLimit reports whether the row shows more power than its limit, as printed (whole watts),
// so that the marker never sits beside two equal numbers.
func (r *gpuRow) overLimit() bool {
	return r.limit > 0 && math.Round(r.power) > math.Round(r.limit)
}

// Lines of the summary that say what its numbers are. The GPUs' power is NVML's 1 s average,
// the figure nvidia-smi and hw.power show; the capping loop closes on instant power, read at its
// own period, so its sum moves ahead of the table while the load changes.
const (
	legendPower   = "POWER: 1 s average, as nvidia-smi shows"
	legendCapping = "capping measured: instant power, summed at its last period"
	overLimitMark = "*"
	// The sim settles a cut in about half a second and its average a second later; real boards
	// enforce a new limit within a few hundred milliseconds.
	overLimitNote = overLimitMark + " power above limit: the 1 s average lags a limit cut and settles within about 2 s; longer means the limit is not holding"
)

// printSummaries writes a compact per-GPU table every interval, for a person watching `make run`.
func printSummaries(ctx context.Context, store *sample.Store, w io.Writer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			writeSummary(w, store, time.Now())
		}
	}
}

func writeSummary(w io.Writer, store *sample.Store, now time.Time) {
	rows := map[int64]*gpuRow{}
	row := func(s *sample.Series) *gpuRow {
		v, ok := s.Attrs.Value(metrics.AttrGPUIndex)
		if !ok {
			return nil
		}
		r := rows[v.AsInt64()]
		if r == nil {
			name, _ := s.Attrs.Value(metrics.AttrHWName)
			r = &gpuRow{index: v.AsInt64(), name: name.AsString()}
			rows[v.AsInt64()] = r
		}
		return r
	}
	is := func(s *sample.Series, key, want string) bool {
		v, ok := s.Attrs.Value(attribute.Key(key))
		return ok && v.AsString() == want
	}
	store.View("gpu", func(b *sample.Batch) {
		if b == nil {
			return
		}
		for _, p := range b.Points {
			s := p.Series
			switch {
			case s.Def == metrics.HWPower:
				row(s).power = p.Value
			case s.Def == metrics.GPUPowerLimit && is(s, metrics.AttrLimitKind, "enforced"):
				row(s).limit = p.Value
			case s.Def == metrics.HWTemperature && is(s, metrics.AttrSensorLocation, "gpu"):
				row(s).temp = p.Value
			case s.Def == metrics.GPUClock && is(s, metrics.AttrClockDomain, "sm"):
				row(s).clock = p.Value
			case s.Def == metrics.GPUUtilization && is(s, metrics.AttrGPUTask, "general"):
				row(s).use = p.Value
			}
		}
	})
	if len(rows) == 0 {
		fmt.Fprintf(w, "%s  no GPU data yet\n", now.Format(time.TimeOnly))
		return
	}
	ordered := make([]*gpuRow, 0, len(rows))
	for _, r := range rows {
		ordered = append(ordered, r)
	}
	sort.Slice(ordered, func(i, j int) bool { return ordered[i].index < ordered[j].index })
	capLine, capOn := cappingLine(store)
	legend := legendPower
	if capOn {
		legend += "; " + legendCapping
	}
	fmt.Fprintf(w, "\n%s  %s\n", now.Format(time.TimeOnly), legend)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "GPU\tPOWER W \tLIMIT W\tTEMP °C\tSM MHz\tUTIL %\t")
	var power, limit float64
	over := false
	for _, r := range ordered {
		power += r.power
		limit += r.limit
		// The marker takes the place of a trailing space, so the digits stay in line.
		mark := " "
		if r.overLimit() {
			mark, over = overLimitMark, true
		}
		fmt.Fprintf(tw, "%d\t%.0f%s\t%.0f\t%.0f\t%.0f\t%.0f\t\n", r.index, r.power, mark, r.limit, r.temp, r.clock/1e6, r.use*100)
	}
	fmt.Fprintf(tw, "all\t%.0f \t%.0f\t\t\t\t\n", power, limit)
	_ = tw.Flush()
	if over {
		fmt.Fprintln(w, overLimitNote)
	}
	if capOn {
		fmt.Fprintln(w, capLine)
	}
}

// cappingLine says what the capping loop steers to, when it runs: the budget and where it comes
// from, the setpoint under the guard band, the power it measured and its mode.
func cappingLine(store *sample.Store) (string, bool) {
	var budget, setpoint, measured float64
	var source, mode string
	found := false
	store.View(capping.StoreKey, func(b *sample.Batch) {
		if b == nil {
			return
		}
		for _, p := range b.Points {
			switch s := p.Series; s.Def {
			case metrics.CappingBudget:
				found, budget = true, p.Value
				if v, ok := s.Attrs.Value(metrics.AttrBudgetSource); ok {
					source = v.AsString()
				}
			case metrics.CappingSetpoint:
				setpoint = p.Value
			case metrics.CappingMeasured:
				measured = p.Value
			case metrics.CappingMode:
				if v, ok := s.Attrs.Value(metrics.AttrCappingMode); ok && p.Value == 1 {
					mode = v.AsString()
				}
			}
		}
	})
	if !found {
		return "", false
	}
	return fmt.Sprintf("capping: budget %.0f W (%s), setpoint %.0f W, measured %.0f W, mode %s", budget, source, setpoint, measured, mode), true
}
