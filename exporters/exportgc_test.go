package exporters

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/sample"
)

// TestExportGCAtMostOncePerGap checks the collection after an export runs at the first export,
// not again within minExportGCGap, and again once the gap has passed.
func TestExportGCAtMostOncePerGap(t *testing.T) {
	clock := time.Unix(1_800_000_000, 0)
	runs := 0
	g := &exportGC{gap: minExportGCGap, now: func() time.Time { return clock }, gc: func() { runs++ }}
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{
		{0, 1},                                // the first export
		{time.Second, 1},                      // a 1 s export interval: not again yet
		{minExportGCGap - 2*time.Second, 1},   // 1 s short of the gap
		{time.Second, 2},                      // the gap since the last one
		{10 * time.Second, 3},                 // the default 10 s interval: after every export
		{-time.Hour, 4},                       // a clock stepped back does not stop it for an hour
		{minExportGCGap - time.Nanosecond, 4}, // a nanosecond short
	} {
		clock = clock.Add(step.advance)
		g.after()
		if runs != step.want {
			t.Fatalf("after %v more: %d collections, want %d", step.advance, runs, step.want)
		}
	}
}

// TestOTLPExportCollectsAfterwards exports through the real gRPC exporter to the Collector's
// receiver and checks a collection was forced after the export, and none while the collector is
// off ($GOGC=off).
func TestOTLPExportCollectsAfterwards(t *testing.T) {
	endpoint, _ := otlptest.Start(t, otlptest.Options{Protocol: "grpc"})
	store := sample.NewStore()
	store.Put("gpu", newFleet(1).batch(5000))
	cfg := otlpConfig("grpc", endpoint)
	cfg.OTLP.Interval = time.Hour // the exports are the test's ForceFlush calls
	e := startExporters(t, Options{Config: cfg, Store: store})

	// Count this exporter's collections (another test's runtime.GC would blur a process-wide
	// count), and check the real one ran.
	var runs int
	gc := e.otlp.gc.gc
	e.otlp.gc.gc = func() { runs++; gc() }
	before := forcedGCs()
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if runs != 1 || forcedGCs() == before {
		t.Errorf("%d collections after an export (process forced %d), want 1", runs, forcedGCs()-before)
	}

	prev := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(prev)
	e.otlp.gc.mu.Lock()
	e.otlp.gc.last = time.Time{} // past the gap: only the collector being off holds it back
	e.otlp.gc.mu.Unlock()
	runs = 0
	if err := e.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if runs != 0 {
		t.Errorf("%d collections after an export with the collector off, want 0", runs)
	}
}

func forcedGCs() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
