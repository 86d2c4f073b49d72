package capping

import (
	"os"
	"sync"
	"testing"

	"github.com/capstan-power/capstan/capping/budget"
)

// reportingSource is a budget source that records the controller's reports.
type reportingSource struct {
	staticSource
	mu      sync.Mutex
	reports []budget.NodeReport
}

func (s *reportingSource) Report(r budget.NodeReport) {
	s.mu.Lock()
	s.reports = append(s.reports, r)
	s.mu.Unlock()
}

func (s *reportingSource) last(t *testing.T) (budget.NodeReport, int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reports) == 0 {
		t.Fatal("no report")
	}
	return s.reports[len(s.reports)-1], len(s.reports)
}

// The controller reports to its source once at Start (bounds, no draw yet) and then every
// period (its measured draw), with the bounds of the GPUs it caps: a GPU it left out is not
// in them.
func TestControllerReportsDrawAndBoundsToItsSource(t *testing.T) {
	r := newRig(t, "steady", 4, 1600, nil)
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.set.StateFile); err != nil {
		t.Fatal(err)
	}
	r.fleet.SetLost(1, true) // left out of capping at start
	src := &reportingSource{}
	src.set(1600)
	r.startOn(r.fleet, src)

	rep, n := src.last(t)
	if n != 1 || rep.DrawOK || rep.MinW != 3*200 || rep.MaxW != 3*700 || !rep.At.Equal(r.clock.Now()) {
		t.Fatalf("after Start: %d reports, last %+v; want one, without a draw, bounds 600..2100 W of the 3 capped GPUs, at %v",
			n, rep, r.clock.Now())
	}
	for k := 2; k <= 6; k++ {
		r.step()
		rep, n = src.last(t)
		if n != k || !rep.DrawOK || rep.DrawW != r.c.MeasuredW() || rep.DrawW <= 0 || !rep.At.Equal(r.clock.Now()) {
			t.Fatalf("period %d: %d reports, last %+v; want one per period with the measured %v W at %v", k-1, n, rep, r.c.MeasuredW(), r.clock.Now())
		}
		if rep.MinW != 600 || rep.MaxW != 2100 {
			t.Fatalf("period %d: bounds %v..%v W, want 600..2100", k-1, rep.MinW, rep.MaxW)
		}
	}
	// A GPU's power reading is lost: the draw is incomplete and said to be.
	r.fleet.SetLost(2, true)
	r.step()
	if rep, _ = src.last(t); rep.DrawOK {
		t.Errorf("report %+v with a GPU's reading missing; want DrawOK false", rep)
	}
}
