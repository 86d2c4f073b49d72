package sim

import (
	"math"
	"testing"
	"time"
)

// Demands gives every GPU exactly what Demand gives it, on every built-in trace, model and GPU
// count, at instants on and off the substeps.
func TestDemandsIsDemandBitForBit(t *testing.T) {
	for _, name := range TraceNames() {
		for _, model := range []string{"H100", "A100", "B200"} {
			m, err := LookupModel(model)
			if err != nil {
				t.Fatal(err)
			}
			for _, gpus := range []int{1, 3, 8} {
				tr, err := NewTrace(name, m, gpus, 17)
				if err != nil {
					t.Fatal(err)
				}
				out := make([]float64, gpus)
				for k := range 2000 {
					at := time.Duration(k)*7919*time.Millisecond + time.Duration(k%13)*time.Microsecond
					Demands(tr, at, out)
					for i, got := range out {
						if want := tr.Demand(i, at); math.Float64bits(got) != math.Float64bits(want) {
							t.Fatalf("%s %s ×%d GPU %d at %s: Demands %v, Demand %v", name, model, gpus, i, at, got, want)
						}
					}
				}
			}
		}
	}
}
