package gpu

import (
	"log/slog"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/clock"
)

// simOn starts a fleet of simulated GPUs with o on a manual clock at 1,700,000,000 s (o.Clock is
// set here) and initialises NVML on it.
func simOn(tb testing.TB, o sim.Options) (*sim.Fleet, *clock.Manual) {
	tb.Helper()
	clk := clock.NewManual(time.Unix(1_700_000_000, 0))
	o.Clock = clk
	fleet, err := sim.New(o)
	if err != nil {
		tb.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		tb.Fatal(ret)
	}
	return fleet, clk
}

// simCollector is simOn and a collector of every metric over the fleet, on its clock, logging to
// log (nil: slog's default).
func simCollector(tb testing.TB, o sim.Options, log *slog.Logger) (*Collector, *sim.Fleet, *clock.Manual) {
	tb.Helper()
	fleet, clk := simOn(tb, o)
	return mustNew(tb, fleet, log, clk.Now), fleet, clk
}

// mustNew is New, failing the test on its error.
func mustNew(tb testing.TB, lib nvml.Interface, log *slog.Logger, now func() time.Time) *Collector {
	tb.Helper()
	c, err := New(lib, log, now)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
