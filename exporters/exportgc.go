package exporters

import (
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// minExportGCGap is the least time between two collections run after exports: with an export
// interval under it, the collection follows every few exports, and the heap stays bounded at a
// cost of at most one cycle (a few milliseconds of CPU on 8 GPUs split seven ways) per gap.
const minExportGCGap = 5 * time.Second

// exportGC runs a garbage collection right after an OTLP export. An export is the largest burst
// the agent allocates: the SDK rebuilds every data point and its attributes as protobuf, marshals
// and compresses them, 2–3 MB held for the length of the export with 8 GPUs split seven ways.
// Being the burst, it is what pushes the heap to the collector's goal, so the collector's own
// cycle tends to start inside it, counts those buffers as live and sets the next goal from them:
// at GOGC 50, about 12 MB of heap for 5 MB of live data. Collected once the export is done, the
// goal follows what the agent keeps: the GPU node peaks 3–5 MiB lower, and with the GC target of
// 100 that the agent takes with OTLP on, about one cycle per export in all (docs/architecture.md,
// "Memory"). Nothing is forced while the collector is off ($GOGC=off with no
// memory.gc-percent): whoever turned it off chose the soft memory limit alone to decide.
type exportGC struct {
	mu   sync.Mutex
	last time.Time
	gap  time.Duration
	now  func() time.Time
	gc   func()
}

func newExportGC() *exportGC {
	return &exportGC{gap: minExportGCGap, now: time.Now, gc: runtime.GC}
}

// after is called when an export returned, whether it succeeded or failed.
func (g *exportGC) after() {
	if gcOff() {
		return
	}
	g.mu.Lock()
	now := g.now()
	if since := now.Sub(g.last); !g.last.IsZero() && since >= 0 && since < g.gap {
		g.mu.Unlock()
		return
	}
	g.last = now
	g.mu.Unlock()
	// Outside the lock: another export finishing meanwhile skips at once instead of waiting
	// for this cycle.
	g.gc()
}

// gcOff tells whether the runtime's GC target is off ($GOGC=off or debug.SetGCPercent(-1)), which
// runtime/metrics reports as the uint64 of -1.
func gcOff() bool {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Kind() == metrics.KindUint64 && int64(s[0].Value.Uint64()) < 0
}
