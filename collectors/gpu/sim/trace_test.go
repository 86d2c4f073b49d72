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
		{"lockstep", 10 * time.Minute, 10 * time.Millisecond, 0.35, 0.995, func(t *testing.T, d [][]float64) {
			for g := range d {
				if share := computeShare(d[g], 0.9); share < 0.77 || share > 0.83 {
					t.Errorf("GPU %d computes %.0f %% of the time, want 80 %%", g, 100*share)
				}
			}
			// In lock-step: at every 10 ms sample past a GPU's first few milliseconds of an
			// iteration, all GPUs are in the same phase.
			for i := range d[0] {
				if i%250 < 2 {
					continue
				}
				for g := range d {
					if (d[g][i] > 0.9) != (d[0][i] > 0.9) {
						t.Fatalf("at %d0 ms GPU %d (%.2f) and GPU 0 (%.2f) are in different phases", i, g, d[g][i], d[0][i])
					}
				}
			}
		}},
		{"roleswap", 2 * time.Hour, time.Second, 0.30, 0.97, func(t *testing.T, d [][]float64) {
			swaps := 0
			for i := range d[0] {
				busyFirst, busySecond := 0, 0
				for g := range d {
					if d[g][i] > 0.7 {
						if g < gpus/2 {
							busyFirst++
						} else {
							busySecond++
						}
					}
				}
				oneJob := busyFirst == gpus/2 && busySecond == 0 || busyFirst == 0 && busySecond == gpus/2
				if !oneJob {
					t.Fatalf("at %d s busy GPUs: %d of the first job, %d of the second; want one whole job", i, busyFirst, busySecond)
				}
				if i > 0 && (d[0][i] > 0.7) != (d[0][i-1] > 0.7) {
					swaps++
				}
			}
			if swaps < 25 || swaps > 31 { // every 4 min over 2 h
				t.Errorf("the jobs swapped %d times in 2 h, want every few minutes", swaps)
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

func computeShare(d []float64, above float64) float64 {
	high := 0
	for _, v := range d {
		if v > above {
			high++
		}
	}
	return float64(high) / float64(len(d))
}

// TestJobTracesOnEveryModel checks the lock-step and role-swap traces keep their shape on every
// model and on odd and large GPU counts: lock-step levels follow the model's limit range (~690 W
// and ~250 W on an H100), and role-swap always has one job busy and one light.
func TestJobTracesOnEveryModel(t *testing.T) {
	for _, name := range Models() {
		m, _ := LookupModel(name)
		for _, gpus := range []int{1, 3, 8, 16} {
			for _, seed := range []int64{1, 7} {
				lock, err := NewTrace("lockstep", m, gpus, seed)
				if err != nil {
					t.Fatal(err)
				}
				span := m.MaxLimitW - m.MinLimitW
				hiLo, hiHi := m.MinLimitW+0.96*span, m.MinLimitW+0.995*span
				loLo, loHi := m.MinLimitW+0.08*span, m.MinLimitW+0.12*span
				var computeT, totalT int
				for at := time.Duration(0); at < 5*time.Minute; at += 10 * time.Millisecond {
					for g := range gpus {
						w := lock.Demand(g, at)
						high := w > (hiLo+loHi)/2
						if high && (w < hiLo || w > hiHi) || !high && (w < loLo || w > loHi) {
							t.Fatalf("%s ×%d seed %d: lockstep GPU %d at %v draws %.0f W, want %.0f–%.0f or %.0f–%.0f",
								name, gpus, seed, g, at, w, hiLo, hiHi, loLo, loHi)
						}
						if g == 0 {
							totalT++
							if high {
								computeT++
							}
						}
					}
				}
				if share := float64(computeT) / float64(totalT); share < 0.77 || share > 0.83 {
					t.Errorf("%s ×%d seed %d: lockstep computes %.0f %% of the time, want 80 %%", name, gpus, seed, 100*share)
				}
				swap, err := NewTrace("roleswap", m, gpus, seed)
				if err != nil {
					t.Fatal(err)
				}
				firstBusy := map[bool]bool{}
				for at := time.Duration(0); at < time.Hour; at += 10 * time.Second {
					busy := make([]bool, gpus)
					for g := range gpus {
						w := swap.Demand(g, at) / m.MaxLimitW
						if w < 0.30 || w > 0.97 {
							t.Fatalf("%s ×%d seed %d: roleswap GPU %d at %v at %.2f of the top", name, gpus, seed, g, at, w)
						}
						busy[g] = w > 0.65
					}
					half := (gpus + 1) / 2
					for g := range gpus {
						if inFirst := g < half; busy[g] != (busy[0] == inFirst) {
							t.Fatalf("%s ×%d seed %d at %v: GPU %d is busy=%v, not with its job", name, gpus, seed, at, g, busy[g])
						}
					}
					firstBusy[busy[0]] = true
				}
				if len(firstBusy) != 2 {
					t.Errorf("%s ×%d seed %d: the first job never swapped its role in an hour", name, gpus, seed)
				}
			}
		}
	}
}
