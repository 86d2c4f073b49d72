package agent

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
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

// memory.gc-percent becomes the runtime's GC target; 0 gives back the agent's default, which is
// $GOGC when the process started with it and defaultGCPercent otherwise.
func TestApplyMemorySetsTheGCPercent(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	applyMemory(config.Memory{GCPercent: 30}, log)
	if got := debug.SetGCPercent(-1); got != 30 {
		t.Errorf("GC percent %d after gc-percent 30, want 30", got)
	}
	applyMemory(config.Memory{}, log)
	if got := debug.SetGCPercent(-1); got != runtimeGCPercent {
		t.Errorf("GC percent %d after gc-percent 0, want the agent's default %d", got, runtimeGCPercent)
	}
}

// Without $GOGC the agent's GC target is defaultGCPercent; with it, whatever the runtime took
// from $GOGC ("off" included).
func TestStartGCPercentRespectsGOGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "") // restores $GOGC after the test
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	if got := startGCPercent(); got != defaultGCPercent {
		t.Errorf("without $GOGC: start GC percent %d, want %d", got, defaultGCPercent)
	}
	// The runtime reads $GOGC when the process starts; here it is set as it would be then.
	for _, p := range []int{200, 100, -1} {
		env := strconv.Itoa(p)
		if p < 0 {
			env = "off"
		}
		t.Setenv("GOGC", env)
		debug.SetGCPercent(p)
		if got := startGCPercent(); got != p {
			t.Errorf("GOGC=%s: start GC percent %d, want %d", env, got, p)
		}
	}
}
