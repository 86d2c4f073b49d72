package agent

import (
	"log/slog"
	"runtime/debug"
	"testing"

	"github.com/capstan-power/capstan/internal/config"
)

// memory.soft-limit-mib becomes the runtime's soft limit, and 0 gives back the one the process
// started with ($GOMEMLIMIT or none), also after a reload that removes the key.
func TestApplyMemorySetsTheSoftLimit(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	defer debug.SetMemoryLimit(runtimeMemoryLimit)
	applyMemory(config.Memory{SoftLimitMiB: 48}, log)
	if got := debug.SetMemoryLimit(-1); got != 48<<20 {
		t.Errorf("limit %d after soft-limit-mib 48, want %d", got, 48<<20)
	}
	applyMemory(config.Memory{}, log)
	if got := debug.SetMemoryLimit(-1); got != runtimeMemoryLimit {
		t.Errorf("limit %d after soft-limit-mib 0, want the starting %d", got, runtimeMemoryLimit)
	}
}
