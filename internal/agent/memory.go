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

// defaultGCPercent is the agent's GOGC unless $GOGC or memory.gc-percent says otherwise. The
// agent's live heap is small (series, their exporter state, a few buffers) and its garbage comes
// from every export and scrape, so Go's 100 lets the heap reach twice what is live; 50 keeps it
// to one and a half. Since a scrape's own metrics leave half the garbage they did, a /metrics
// scraped several times a second costs no more CPU at 50 than at 75 (docs/architecture.md,
// "Memory", gives the measurements).
const defaultGCPercent = 50

// runtimeGCPercent is the GC target the agent falls back to when memory.gc-percent is 0: $GOGC
// as the runtime read it ("off" is -1) when set, else defaultGCPercent.
var runtimeGCPercent = startGCPercent()

func startGCPercent() int {
	if _, set := os.LookupEnv("GOGC"); !set {
		return defaultGCPercent
	}
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// applyMemory sets the Go runtime's soft memory limit and GC target from the configuration, at
// start and on every reload.
func applyMemory(m config.Memory, log *slog.Logger) {
	limit := runtimeMemoryLimit
	if m.SoftLimitMiB > 0 {
		limit = int64(m.SoftLimitMiB) << 20
	}
	if prev := debug.SetMemoryLimit(limit); prev != limit && m.SoftLimitMiB > 0 {
		log.Info("Go runtime soft memory limit set", "mib", m.SoftLimitMiB)
	}
	percent := runtimeGCPercent
	if m.GCPercent > 0 {
		percent = m.GCPercent
	}
	if prev := debug.SetGCPercent(percent); prev != percent && m.GCPercent > 0 {
		log.Info("Go runtime GC target set", "percent", m.GCPercent)
	}
}
