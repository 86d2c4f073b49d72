package sim

import (
	"math"
	"strings"
	"testing"
	"time"
)

// sampleTrace returns demand as a share of the model's top limit, per GPU, every step over span.
func sampleTrace(t *testing.T, name string, gpus int, seed int64, span, step time.Duration) [][]float64 {
	t.Helper()
	m, _ := LookupModel("H100")
	tr, err := NewTrace(name, m, gpus, seed)
	if err != nil {
		t.Fatalf("NewTrace(%s): %v", name, err)
	}
	out := make([][]float64, gpus)
	for g := range gpus {
		for at := time.Duration(0); at < span; at += step {
			out[g] = append(out[g], tr.Demand(g, at)/m.MaxLimitW)
		}
	}
	return out
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// TestBuiltInTraces checks each trace's shape, its range, and that it is a function of its seed.
func TestBuiltInTraces(t *testing.T) {
	const gpus = 8
	tests := []struct {
		name       string
		span, step time.Duration
		lo, hi     float64 // share of the top limit every sample stays within
		shape      func(t *testing.T, d [][]float64)
	}{
		{"steady", time.Hour, time.Second, 0.80, 0.90, func(t *testing.T, d [][]float64) {
			means := map[float64]bool{}
			for g := range d {
				means[math.Round(mean(d[g])*1000)] = true
			}
			if len(means) < gpus/2 {
				t.Errorf("GPUs share their means: %v", means)
			}
		}},
		{"bursty", time.Hour, 100 * time.Millisecond, 0.30, 1.00, func(t *testing.T, d [][]float64) {
			for g := range d {
				run, lo, hi := 1, 1.0, 0.0
				for i := 1; i < len(d[g]); i++ {
					lo, hi = min(lo, d[g][i]), max(hi, d[g][i])
					if d[g][i] == d[g][i-1] {
						run++
						continue
					}
					// A burst ends: it lasted 1–10 s, the first one excepted as it started before 0.
					if run < 9 || run > 101 {
						if run != i {
							t.Fatalf("GPU %d: a burst of %d00 ms ending at %d00 ms", g, run, i)
						}
					}
					run = 1
				}
				if lo > 0.4 || hi < 0.9 {
					t.Errorf("GPU %d bursts only between %.2f and %.2f of the top", g, lo, hi)
				}
			}
		}},
		{"training", time.Hour, 100 * time.Millisecond, 0.42, 0.98, func(t *testing.T, d [][]float64) {
			for g := range d {
				high := 0
				for _, v := range d[g] {
					if v > 0.9 {
						high++
					}
				}
				if share := float64(high) / float64(len(d[g])); share < 0.78 || share > 0.82 {
					t.Errorf("GPU %d computes %.0f %% of the time, want 80 %%", g, 100*share)
				}
			}
			for _, sec := range []int{5, 9, 1805, 1809, 3595, 3599} { // every GPU in phase, all along
				i := sec * 10
				for g := range d {
					if compute := sec%10 < 8; (d[g][i] > 0.9) != compute {
						t.Errorf("GPU %d at %d s: %.2f of the top, want compute %v", g, sec, d[g][i], compute)
					}
				}
			}
		}},
		{"inference", 24 * time.Hour, 10 * time.Second, 0.20, 0.98, func(t *testing.T, d [][]float64) {
			hourly := make([]float64, 24)
			for h := range 24 {
				hourly[h] = mean(d[0][h*360 : (h+1)*360])
			}
			lo, hi := slicesMin(hourly), slicesMax(hourly)
			if lo > 0.36 || hi < 0.84 {
				t.Errorf("hourly means span %.2f–%.2f of the top, want about 0.30–0.90", lo, hi)
			}
			if hourly[6] < hourly[0] || hourly[18] > hourly[12] {
				t.Errorf("hourly means %.2f do not follow the day", hourly)
			}
		}},
		{"imbalanced", time.Hour, time.Second, 0.32, 0.98, func(t *testing.T, d [][]float64) {
			sets := map[string]bool{}
			everHeavy := make([]bool, gpus)
			for i := range d[0] {
				var set strings.Builder
				heavy := 0
				for g := range d {
					if d[g][i] > 0.7 {
						heavy++
						everHeavy[g] = true
						set.WriteByte('H')
					} else {
						set.WriteByte('l')
					}
				}
				if heavy != gpus/2 {
					t.Fatalf("at %d s %d of %d GPUs are heavy, want half", i, heavy, gpus)
				}
				sets[set.String()] = true
			}
			if len(sets) < 5 {
				t.Errorf("the heavy set took only %d shapes in an hour", len(sets))
			}
			for g, h := range everHeavy {
				if !h {
					t.Errorf("GPU %d never ran heavy in an hour", g)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := sampleTrace(t, tt.name, gpus, 42, tt.span, tt.step)
			for g := range d {
				for i, v := range d[g] {
					if v < tt.lo || v > tt.hi {
						t.Fatalf("GPU %d sample %d: %.3f of the top limit, outside %.2f–%.2f", g, i, v, tt.lo, tt.hi)
					}
				}
			}
			tt.shape(t, d)
			again := sampleTrace(t, tt.name, gpus, 42, tt.span, tt.step)
			other := sampleTrace(t, tt.name, gpus, 43, tt.span, tt.step)
			same, differs := true, false
			for g := range d {
				for i := range d[g] {
					same = same && d[g][i] == again[g][i]
					differs = differs || d[g][i] != other[g][i]
				}
			}
			if !same || !differs {
				t.Errorf("same seed reproduces: %v; another seed differs: %v", same, differs)
			}
		})
	}
}

func slicesMin(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func slicesMax(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// TestImbalancedOddCount checks a lone GPU still alternates between heavy and light.
func TestImbalancedOddCount(t *testing.T) {
	d := sampleTrace(t, "imbalanced", 1, 1, 12*time.Minute, time.Minute)
	heavy, light := false, false
	for _, v := range d[0] {
		heavy, light = heavy || v > 0.7, light || v < 0.5
	}
	if !heavy || !light {
		t.Errorf("one GPU over 12 min: ever heavy %v, ever light %v", heavy, light)
	}
}
