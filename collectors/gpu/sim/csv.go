package sim

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// csvTrace replays recorded demand: one row per instant, linear in between, looping at the end.
type csvTrace struct {
	times []float64 // seconds, strictly increasing
	watts []float64 // row-major, cols values per row
	cols  int
}

// LoadCSVTrace reads a trace file with the header time_s,gpu0,gpu1,… and one row per instant
// giving each GPU's demand in watts. GPUs beyond the file's columns reuse them round-robin.
func LoadCSVTrace(path string) (Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening trace: %w", err)
	}
	defer f.Close()
	return ParseCSVTrace(path, f)
}

// ParseCSVTrace parses a CSV trace from r; name is the file name its errors report.
func ParseCSVTrace(name string, r io.Reader) (Trace, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1 // a short row gets this package's message, with its line
	cr.TrimLeadingSpace = true
	cr.Comment = '#'
	cr.ReuseRecord = true

	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("trace %s: bad header: the file is empty; want time_s,gpu0,gpu1,…", name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading trace %s: %w", name, err)
	}
	header = slices.Clone(header) // the reader reuses its record for the rows
	line, _ := cr.FieldPos(0)
	if err := checkHeader(header); err != nil {
		return nil, fmt.Errorf("trace %s line %d: bad header: %w", name, line, err)
	}
	t := &csvTrace{cols: len(header) - 1}
	for {
		row, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading trace %s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		if err := t.addRow(row, header); err != nil {
			return nil, fmt.Errorf("trace %s line %d: %w", name, line, err)
		}
	}
	if len(t.times) < 2 {
		return nil, fmt.Errorf("trace %s: too few rows: found %d, need at least 2 to interpolate between", name, len(t.times))
	}
	return t, nil
}

func checkHeader(header []string) error {
	if len(header) < 2 {
		return fmt.Errorf("want time_s and at least one gpuN column, got %q", strings.Join(header, ","))
	}
	if strings.TrimSpace(header[0]) != "time_s" {
		return fmt.Errorf("first column is %q, want time_s", header[0])
	}
	for i, h := range header[1:] {
		if want := "gpu" + strconv.Itoa(i); strings.TrimSpace(h) != want {
			return fmt.Errorf("column %d is %q, want %s", i+2, h, want)
		}
	}
	return nil
}

func (t *csvTrace) addRow(row, header []string) error {
	if len(row) != len(header) {
		return fmt.Errorf("%d values, but the header names %d columns", len(row), len(header))
	}
	at, err := parseNumber(row[0], header[0])
	if err != nil {
		return err
	}
	if at < 0 {
		return fmt.Errorf("time_s %g is negative", at)
	}
	if n := len(t.times); n > 0 && at <= t.times[n-1] {
		return fmt.Errorf("time_s %g is not after the previous row's %g: times must increase", at, t.times[n-1])
	}
	for i, v := range row[1:] {
		w, err := parseNumber(v, header[i+1])
		if err != nil {
			return err
		}
		if w < 0 {
			return fmt.Errorf("%s is %g W: watts cannot be negative", header[i+1], w)
		}
		t.watts = append(t.watts, w)
	}
	t.times = append(t.times, at)
	return nil
}

func parseNumber(s, column string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%s value %q is not a number", column, s)
	}
	return v, nil
}

func (t *csvTrace) Demand(gpu int, elapsed time.Duration) float64 {
	col := gpu % t.cols
	if col < 0 {
		col += t.cols
	}
	first, last := t.times[0], t.times[len(t.times)-1]
	at := elapsed.Seconds()
	if at > last {
		at = first + math.Mod(at-first, last-first)
	}
	if at <= first {
		return t.watts[col]
	}
	i := sort.SearchFloat64s(t.times, at) // times[i-1] < at <= times[i]
	t0, t1 := t.times[i-1], t.times[i]
	w0, w1 := t.watts[(i-1)*t.cols+col], t.watts[i*t.cols+col]
	return w0 + (w1-w0)*(at-t0)/(t1-t0)
}
