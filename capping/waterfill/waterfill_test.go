package waterfill

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestShare(t *testing.T) {
	for _, tc := range []struct {
		name   string
		claims []Claim
		avail  float64
		want   []float64
		fits   bool
	}{
		{"equal weights share equally", []Claim{{400, 1400, 1400, 1}, {400, 1400, 1400, 1}}, 2000, []float64{1000, 1000}, true},
		{"weights share in proportion above the floors", []Claim{{400, 1400, 1400, 1}, {400, 1400, 1400, 3}}, 1200, []float64{500, 700}, true},
		{"demand first, then the rest up to max", []Claim{{400, 500, 1400, 1}, {400, 1400, 1400, 1}}, 2000, []float64{600, 1400}, true},
		{"a small demand is met, the rest goes to the hungry", []Claim{{400, 450, 1400, 1}, {400, 1400, 1400, 1}}, 1800, []float64{450, 1350}, true},
		{"everyone capped at max", []Claim{{400, 1400, 1400, 1}, {400, 1400, 1400, 1}}, 5000, []float64{1400, 1400}, true},
		{"below the floors: floors kept, reported", []Claim{{400, 1400, 1400, 1}, {600, 1400, 1400, 1}}, 500, []float64{400, 600}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := make([]float64, len(tc.claims))
			fits, _ := Share(tc.claims, tc.avail, out, nil)
			if fits != tc.fits {
				t.Errorf("fits %v, want %v", fits, tc.fits)
			}
			sum := 0.0
			for i := range out {
				sum += out[i]
				if math.Abs(out[i]-tc.want[i]) > 1e-6 {
					t.Errorf("share %d = %v, want %v (all %v)", i, out[i], tc.want[i], out)
				}
			}
			if tc.fits && sum > tc.avail+1e-6 {
				t.Errorf("Σ shares %v above available %v", sum, tc.avail)
			}
		})
	}
}

// A party that reaches its top gets exactly its top: the allocator rounds grants down to whole
// watts, so a rounding error below it would cost a watt.
func TestRaiseReachesTopExactly(t *testing.T) {
	claims := []Claim{{0.1, 1400, 1400, 3}, {0.2, 700, 700, 7}}
	out := make([]float64, 2)
	Share(claims, 1e6, out, nil)
	if out[0] != 1400 || out[1] != 700 {
		t.Errorf("shares %v, want exactly [1400 700]", out)
	}
}

// levels is a Vessels over plain slices, for the fuzz test.
type levels struct{ level, top, weight []float64 }

func (l levels) Len() int             { return len(l.level) }
func (l levels) Level(i int) float64  { return l.level[i] }
func (l levels) Top(i int) float64    { return l.top[i] }
func (l levels) Weight(i int) float64 { return l.weight[i] }
func (l levels) Set(i int, w float64) { l.level[i] = w }

// Raise never lowers a party nor lifts it past its top, spends exactly min(left, Σ room), and
// leaves every party that is not full at the same level per unit of weight above its start (a
// party of weight 0 does not move).
func FuzzRaise(f *testing.F) {
	f.Add(uint64(1), 3000.0)
	f.Add(uint64(7), 0.5)
	f.Fuzz(func(t *testing.T, seed uint64, left float64) {
		if !(left >= 0 && left < 1e6) {
			t.Skip()
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		n := 1 + rng.IntN(64)
		l := levels{make([]float64, n), make([]float64, n), make([]float64, n)}
		start := make([]float64, n)
		room := 0.0
		for i := range n {
			l.level[i] = 50 + rng.Float64()*300
			l.top[i] = l.level[i] - 50 + rng.Float64()*700 // some start above their top
			if rng.IntN(8) > 0 {
				l.weight[i] = 0.1 + rng.Float64()*10
				room += max(0, l.top[i]-l.level[i])
			}
			start[i] = l.level[i]
		}
		rest, _ := Raise(l, left, nil)
		given := 0.0
		rise := math.NaN() // the common rise per unit of weight of the parties not full
		for i := range n {
			d := l.level[i] - start[i]
			given += d
			switch {
			case d < -1e-9:
				t.Fatalf("party %d lowered from %v to %v", i, start[i], l.level[i])
			case d > 1e-9 && l.level[i] > l.top[i]+1e-9:
				t.Fatalf("party %d raised to %v past its top %v", i, l.level[i], l.top[i])
			case l.weight[i] == 0 && d != 0:
				t.Fatalf("party %d of weight 0 moved by %v", i, d)
			case l.weight[i] > 0 && l.level[i] < l.top[i]-1e-6:
				r := d / l.weight[i]
				if !math.IsNaN(rise) && math.Abs(r-rise) > 1e-6*max(1, rise) {
					t.Fatalf("parties not full rose by %v and %v W per unit of weight", rise, r)
				}
				rise = r
			}
		}
		want := min(left, room)
		if math.Abs(given-want) > 1e-6*max(1, want) || math.Abs(given+rest-left) > 1e-6*max(1, left) {
			t.Fatalf("gave %v W and kept %v W of %v W, want %v W given (room %v W)", given, rest, left, want, room)
		}
	})
}
