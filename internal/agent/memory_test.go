package agent

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// memory.soft-limit-mib becomes the runtime's soft limit, and 0 gives back the one the process
// started with ($GOMEMLIMIT or none), also after a reload that removes the key.
func TestApplyMemorySetsTheSoftLimit(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	defer debug.SetMemoryLimit(runtimeMemoryLimit)
	applyMemory(config.Memory{SoftLimitMiB: 48}, false, log)
	if got := debug.SetMemoryLimit(-1); got != 48<<20 {
		t.Errorf("limit %d after soft-limit-mib 48, want %d", got, 48<<20)
	}
	applyMemory(config.Memory{}, false, log)
	if got := debug.SetMemoryLimit(-1); got != runtimeMemoryLimit {
		t.Errorf("limit %d after soft-limit-mib 0, want the starting %d", got, runtimeMemoryLimit)
	}
}

// memory.gc-percent becomes the runtime's GC target, with or without OTLP; 0 gives back the
// agent's default: $GOGC when the process started with it, else defaultGCPercent without OTLP
// and defaultGCPercentOTLP with it, also after a reload that turns OTLP on or off.
// It sets startGOGC, a package variable: no test of this package runs in parallel.
func TestApplyMemorySetsTheGCPercent(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func(p int, set bool) { startGOGC, startGOGCSet = p, set }(startGOGC, startGOGCSet)
	for _, otlp := range []bool{false, true} {
		applyMemory(config.Memory{GCPercent: 30}, otlp, log)
		if got := debug.SetGCPercent(-1); got != 30 {
			t.Errorf("OTLP %v: GC percent %d after gc-percent 30, want 30", otlp, got)
		}
	}
	for _, c := range []struct {
		gogc    int
		gogcSet bool
		otlp    bool
		want    int
	}{
		{0, false, false, defaultGCPercent},
		{0, false, true, defaultGCPercentOTLP},
		{0, false, false, defaultGCPercent}, // a reload that turns OTLP off again
		{200, true, false, 200},
		{200, true, true, 200},
		{-1, true, true, -1}, // $GOGC=off stays off
	} {
		startGOGC, startGOGCSet = c.gogc, c.gogcSet
		applyMemory(config.Memory{}, c.otlp, log)
		if got := debug.SetGCPercent(-1); got != c.want {
			t.Errorf("$GOGC %d (set %v), OTLP %v: GC percent %d after gc-percent 0, want %d", c.gogc, c.gogcSet, c.otlp, got, c.want)
		}
	}
}

// envGCPercent reports no $GOGC when it is unset, and whatever the runtime took from it when it
// is set ("off" included).
func TestEnvGCPercentRespectsGOGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "") // restores $GOGC after the test
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
	if _, set := envGCPercent(); set {
		t.Error("without $GOGC: envGCPercent reports it set")
	}
	// The runtime reads $GOGC when the process starts; here it is set as it would be then.
	for _, p := range []int{200, 100, -1} {
		env := strconv.Itoa(p)
		if p < 0 {
			env = "off"
		}
		t.Setenv("GOGC", env)
		debug.SetGCPercent(p)
		if got, set := envGCPercent(); got != p || !set {
			t.Errorf("GOGC=%s: envGCPercent %d (set %v), want %d (set)", env, got, set, p)
		}
	}
}

// Run sets the GC target from the configuration it runs: the OTLP default with an OTLP endpoint,
// the agent's default without one.
func TestRunSetsTheGCTargetForOTLP(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func(p int, set bool) { startGOGC, startGOGCSet = p, set }(startGOGC, startGOGCSet)
	startGOGC, startGOGCSet = 0, false // as if started without $GOGC
	for _, c := range []struct {
		endpoint string
		want     int
	}{
		{otlptest.FreeAddr(t), defaultGCPercentOTLP}, // nothing listens: exports fail, the target holds
		{"", defaultGCPercent},
	} {
		cfg := simConfig("gpu")
		cfg.Web.ListenAddress = ""
		cfg.Summary.Interval = 0
		cfg.OTLP.Endpoint, cfg.OTLP.Insecure, cfg.OTLP.Interval = c.endpoint, true, time.Hour
		debug.SetGCPercent(7) // neither default: Run must set it
		log, logs := testkit.NewLogger()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg, Options{Log: log}) }()
		testkit.WaitFor(t, "the agent ready line", func() bool { return logs.Contains(`msg="agent ready"`) })
		got := debug.SetGCPercent(-1)
		debug.SetGCPercent(got)
		cancel()
		if err := testkit.Receive(t, done, 10*time.Second, "Run to return"); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if got != c.want {
			t.Errorf("otlp.endpoint %q: GC target %d while running, want %d", c.endpoint, got, c.want)
		}
	}
}
