package agent

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	_ "github.com/capstan-power/capstan/collectors/all"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/testkit"
)

// simConfig runs the sim backend with only the named collectors on.
func simConfig(on ...string) *config.Config {
	cfg := config.Default()
	cfg.Node.Name = "test-node"
	cfg.GPU.Backend = "sim"
	cfg.GPU.Sim.Count = 2
	for name, c := range cfg.Collectors {
		c.Enabled = false
		for _, o := range on {
			c.Enabled = c.Enabled || name == o
		}
		cfg.Collectors[name] = c
	}
	return cfg
}

// The GPU backend opens once for whoever needs it, whether or not the GPU collector is on, and
// not at all when nobody does.
func TestPipelineOpensTheGPUBackendForWhoeverNeedsIt(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	capping := simConfig()
	capping.Capping.Enabled = true
	for _, tc := range []struct {
		name string
		cfg  *config.Config
		want bool
	}{
		{"gpu collector", simConfig("gpu"), true},
		{"workload collector alone", simConfig("workload"), true},
		{"capping alone", capping, true},
		{"nobody", simConfig("nic"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPipeline(tc.cfg, log, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if got := p.GPU != nil; got != tc.want {
				t.Errorf("GPU backend open = %v, want %v", got, tc.want)
			}
		})
	}
}

// A simulator that cannot start is a configuration error, whoever asked for the backend.
func TestPipelineBadSimulatorIsAnError(t *testing.T) {
	cfg := simConfig("workload")
	cfg.GPU.Sim.Model = "Z9"
	if _, err := NewPipeline(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil); err == nil {
		t.Fatal("NewPipeline with a bad simulated model: no error")
	}
}

// The ready line names the collectors that run, and apart, with why, those that did not start.
func TestReadyLineSaysWhichCollectorsRun(t *testing.T) {
	cfg := simConfig("gpu", "thermal")
	sysfs := t.TempDir() // no thermal zone: the thermal collector has no source
	cfg.Path.Sysfs = sysfs
	cfg.Web.ListenAddress = ""
	cfg.Summary.Interval = 0
	log, logs := testkit.NewLogger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, Options{Log: log}) }()
	testkit.WaitFor(t, "the agent ready line", func() bool { return logs.Contains(`msg="agent ready"`) })
	cancel()
	if err := testkit.Receive(t, done, 10*time.Second, "Run to return"); err != nil {
		t.Fatalf("Run: %v", err)
	}
	var ready string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `msg="agent ready"`) {
			ready = l
		}
	}
	want := `msg="agent ready" collectors=[gpu] disabled="thermal (no thermal zone, cooling device, hwmon chip or powercap zone under ` +
		sysfs + `: source not available on this host)" web="" otlp=""`
	if !strings.HasSuffix(ready, want) {
		t.Errorf("ready line\n%s\nwant it to end\n%s", ready, want)
	}
}
