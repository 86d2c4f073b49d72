package agent

import (
	"log/slog"
	"runtime/debug"

	"github.com/capstan-power/capstan/internal/config"
)

// runtimeMemoryLimit is the soft memory limit the process started with: $GOMEMLIMIT, else none
// (math.MaxInt64). memory.soft-limit-mib 0 goes back to it.
var runtimeMemoryLimit = debug.SetMemoryLimit(-1)

// applyMemory sets the Go runtime's soft memory limit from the configuration, at start and on
// every reload.
func applyMemory(m config.Memory, log *slog.Logger) {
	limit := runtimeMemoryLimit
	if m.SoftLimitMiB > 0 {
		limit = int64(m.SoftLimitMiB) << 20
	}
	if prev := debug.SetMemoryLimit(limit); prev != limit && m.SoftLimitMiB > 0 {
		log.Info("Go runtime soft memory limit set", "mib", m.SoftLimitMiB)
	}
}
