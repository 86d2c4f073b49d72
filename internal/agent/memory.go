package agent

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/capstan-power/capstan/internal/config"
)

// runtimeMemoryLimit is the soft memory limit the process started with: $GOMEMLIMIT, else none
// (math.MaxInt64). memory.soft-limit-mib 0 goes back to it.
var runtimeMemoryLimit = debug.SetMemoryLimit(-1)

// defaultGCPercent is the agent's GOGC unless $GOGC or memory.gc-percent says otherwise, while
// OTLP is off. The agent's live heap is small (series, their exporter state, a few buffers) and
// its garbage comes from every scrape, so Go's 100 lets the heap reach twice what is live; 50
// keeps it to one and a half. Since a scrape's own metrics leave half the garbage they did, a
// /metrics scraped several times a second costs no more CPU at 50 than at 75
// (docs/architecture.md, "Memory", gives the measurements).
const defaultGCPercent = 50

// defaultGCPercentOTLP is the default while OTLP is on. The exporter then collects right after
// each export (exporters/exportgc.go), which keeps the heap near what is live plus one export's
// buffers; the target only has to let an export run without a cycle of its own. At 50 one
// started inside nearly every export (two cycles an export); at 100 the GPU node of
// docs/architecture.md ran 10–11 cycles a minute instead of 22, 0.25–0.28 % of a core instead of
// 0.33–0.35 %, peaking at 34.2–35.2 MiB against 34.1–34.3 MiB.
const defaultGCPercentOTLP = 100

// startGOGC is the GC target the process started with from $GOGC ("off" is -1), and whether
// $GOGC was set: memory.gc-percent 0 goes back to it.
var startGOGC, startGOGCSet = envGCPercent()

func envGCPercent() (int, bool) {
	if _, set := os.LookupEnv("GOGC"); !set {
		return 0, false
	}
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p, true
}

// defaultPercent is the GC target for memory.gc-percent 0: $GOGC when the process started with
// it, else the agent's default for whether OTLP is on.
func defaultPercent(otlp bool) int {
	switch {
	case startGOGCSet:
		return startGOGC
	case otlp:
		return defaultGCPercentOTLP
	}
	return defaultGCPercent
}

// applyMemory sets the Go runtime's soft memory limit and GC target from the configuration, at
// start and on every reload; otlp tells whether the configuration exports OTLP.
func applyMemory(m config.Memory, otlp bool, log *slog.Logger) {
	limit := runtimeMemoryLimit
	if m.SoftLimitMiB > 0 {
		limit = int64(m.SoftLimitMiB) << 20
	}
	if prev := debug.SetMemoryLimit(limit); prev != limit && m.SoftLimitMiB > 0 {
		log.Info("Go runtime soft memory limit set", "mib", m.SoftLimitMiB)
	}
	percent := defaultPercent(otlp)
	if m.GCPercent > 0 {
		percent = m.GCPercent
	}
	if prev := debug.SetGCPercent(percent); prev != percent && m.GCPercent > 0 {
		log.Info("Go runtime GC target set", "percent", m.GCPercent)
	}
}
