package hostfixtures_test

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/capstan-power/capstan/collectors/cpufreq"
	"github.com/capstan-power/capstan/collectors/thermal"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/sample"
)

// BenchmarkHostCollection is one collection of cpufreq and thermal (zones, cooling devices,
// hwmon, RAPL) on the 192-CPU host: the target is at most 3 ms of CPU.
func BenchmarkHostCollection(b *testing.B) {
	freq, therm := bigHost(b)
	ctx := context.Background()
	var fb, tb sample.Batch
	points := 0
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		now := time.Now()
		fb.Reset(cpufreq.Name, now)
		tb.Reset(thermal.Name, now)
		if err := freq.Collect(ctx, &fb); err != nil {
			b.Fatal(err)
		}
		if err := therm.Collect(ctx, &tb); err != nil {
			b.Fatal(err)
		}
		points = len(fb.Points) + len(tb.Points)
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(points), "points/op")
}

// bigHost returns the cpufreq and thermal collectors on the 192-CPU host.
func bigHost(tb testing.TB) (*cpufreq.Collector, *thermal.Collector) {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	root := hostfixtures.Sysfs(hostfixtures.Big)
	freq, err := cpufreq.New(root, log, nil)
	if err != nil {
		tb.Fatal(err)
	}
	therm, err := thermal.New(thermal.Options{Sysfs: root, Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	return freq, therm
}

// cpuTime is the user and system CPU time the process used, in nanoseconds: the figure the
// target is about, which wall time on a shared machine is not.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// TestBigHostIsComplete checks the benchmark measures what it claims: every CPU and sensor.
func TestBigHostIsComplete(t *testing.T) {
	freq, therm := bigHost(t)
	var fb, tb sample.Batch
	if err := freq.Collect(context.Background(), &fb); err != nil {
		t.Fatal(err)
	}
	if err := therm.Collect(context.Background(), &tb); err != nil {
		t.Fatal(err)
	}
	// Per CPU: frequency, 4 limits, governor, core throttle; plus 2 package throttle counters.
	if want := 192*7 + 2; len(fb.Points) != want {
		t.Errorf("cpufreq: %d points, want %d", len(fb.Points), want)
	}
	// 2 zones (+2 trips each), 1 cooling device (2), 98 coretemp sensors (+max, crit, alarm),
	// 2 NVMe temperatures (Composite: min, max, crit, alarm; Sensor 1: min, max), 4 RAPL
	// energies, 2 constraints (limit, window).
	if want := 2*3 + 2 + 98*4 + (5 + 3) + 4 + 2*2; len(tb.Points) != want {
		t.Errorf("thermal: %d points, want %d", len(tb.Points), want)
	}
}
