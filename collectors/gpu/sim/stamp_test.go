package sim

import (
	"math/rand/v2"
	"testing"
	"time"
)

// A field value's timestamp is the one time.Time's arithmetic gives, for any start (before and
// after 1970, on and off whole microseconds) and any substep (before the start included).
func TestUnixMicroAtIsTimeArithmetic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	starts := []time.Time{epoch, time.Unix(0, 0), time.Unix(-1, 999_999_999), time.Date(1969, 12, 31, 23, 59, 59, 123_456_789, time.UTC)}
	for range 50 {
		starts = append(starts, time.Unix(rng.Int64N(1<<33)-1<<32, rng.Int64N(1e9)))
	}
	for _, start := range starts {
		f := &Fleet{start: start}
		for _, step := range append([]int64{0, -1, 1, -10, -100, 99, 100, 101}, rng.Int64N(1<<40)-1<<39, rng.Int64N(1e6)-5e5) {
			if got, want := f.unixMicroAt(step), start.Add(time.Duration(step)*substep).UnixMicro(); got != want {
				t.Fatalf("start %s, substep %d: %d µs; time.Time says %d", start, step, got, want)
			}
		}
	}
}
