// Package agent wires Capstan together: GPU backend, collectors, sample store and exporters,
// started in dependency order and stopped in reverse under one context.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/collectors/gpu"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/exporters"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/panics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/version"
)

// Pipeline is the collecting half of the agent for one configuration: the GPU backend, every
// enabled collector and the store they write to.
type Pipeline struct {
	Config *config.Config
	Log    *slog.Logger
	Store  *sample.Store
	GPU    *gpu.Backend // nil when the host has no GPU backend
	// NoGPU says why the GPU backend did not open when something asked for it, or is nil.
	NoGPU  error
	Runner *collectors.Runner
	// Started names the collectors that run; Disabled those enabled that did not start, each
	// with why, so that the ready line says which is which.
	Started  []string
	Disabled []string
}

// openBackend opens the GPU backend cfg names, the simulated fleet driven by clk.
func openBackend(cfg *config.Config, clk clock.Clock, log *slog.Logger) (*gpu.Backend, error) {
	s := cfg.GPU.Sim
	return gpu.Open(cfg.GPU.Backend, sim.Options{Model: s.Model, Count: s.Count, Trace: s.Trace, Seed: s.Seed, Clock: clk,
		StateFile: s.StateFile, FaultFile: s.FaultFile, Log: log, MIG: s.MIG})
}

// NewPipeline builds every enabled collector, with the GPU backend opened once for whoever
// needs it: the GPU collector, the workload collector, and the capping controller when capping
// is enabled. A collector that cannot start is registered as failed (up=0) and the pipeline runs
// without it.
func NewPipeline(cfg *config.Config, log *slog.Logger, clk clock.Clock) (*Pipeline, error) {
	if clk == nil {
		clk = clock.Real()
	}
	p := &Pipeline{Config: cfg, Log: log, Store: sample.NewStore()}
	p.Runner = collectors.NewRunner(p.Store, log, clk.Now)
	p.Runner.SetMetricFilter(cfg.Metrics.Enabled)

	res := &collectors.Resources{}
	collectors.Provide(res, func() (nvml.Interface, error) {
		backend, err := openBackend(cfg, clk, log)
		if err != nil {
			p.NoGPU = err
			return nil, err
		}
		p.GPU = backend
		log.Info("GPU backend ready", "backend", backend.Kind)
		ps := cfg.GPU.PowerSmoothing
		_, _, _ = gpu.ApplyPowerSmoothing(backend.Lib, ps.State, ps.Profile, log) // it logs what it did
		return backend.Lib, nil
	})
	set := collectors.Settings{Logger: log, Now: clk.Now, Sysfs: cfg.Path.Sysfs, Procfs: cfg.Path.Procfs,
		NodeName: cfg.Node.Name, Resources: res, MetricEnabled: cfg.Metrics.Enabled}

	for _, f := range collectors.Factories() {
		cc := cfg.Collector(f.Name)
		if !cc.Enabled {
			continue
		}
		c, err := f.New(set, cfg.CollectorConfig(f.Name))
		if err != nil {
			p.Runner.AddFailed(f.Name, err)
			p.Disabled = append(p.Disabled, fmt.Sprintf("%s (%v)", f.Name, err))
			continue
		}
		p.Runner.Add(f.Name, c, cc.Interval, cc.Timeout)
		p.Started = append(p.Started, f.Name)
	}
	if cfg.Capping.Enabled {
		// The controller needs the backend also when no collector asked for it.
		_, _ = collectors.Lookup[nvml.Interface](set)
	}
	if p.NoGPU != nil && !errors.Is(p.NoGPU, collectors.ErrNoSource) && cfg.GPU.Backend == "sim" {
		// A bad simulator setting is a configuration error, not a host condition.
		err := p.NoGPU
		p.Close()
		return nil, err
	}
	return p, nil
}

// readyAttrs are the ready line's fields: the collectors that run and, apart, those that did not
// start with why, then where the agent serves and pushes.
func (p *Pipeline) readyAttrs(cfg *config.Config) []any {
	attrs := []any{"collectors", p.Started}
	if len(p.Disabled) > 0 {
		attrs = append(attrs, "disabled", strings.Join(p.Disabled, "; "))
	}
	return append(attrs, "web", cfg.Web.ListenAddress, "otlp", cfg.OTLP.Endpoint)
}

// Close releases collectors and the GPU backend. While a collection is hung (an NVML call that
// never returned) the backend stays open: unloading NVML under a running call can crash.
func (p *Pipeline) Close() {
	if p.Runner.Close() {
		if p.GPU != nil {
			p.Log.Warn("a collection is still hung; leaving the GPU backend open")
		}
		return
	}
	if p.GPU != nil {
		if err := p.GPU.Shutdown(); err != nil {
			p.Log.Warn("shutting down the GPU backend", "err", err)
		}
	}
}

// Options are what Run needs besides the configuration.
type Options struct {
	Log *slog.Logger
	// Reload re-reads the configuration on SIGHUP (file and flags); nil disables reloads.
	Reload func() (*config.Config, error)
	// Hangup delivers SIGHUP.
	Hangup <-chan os.Signal
	// Terminal receives the summary table.
	Terminal io.Writer
	// Clock drives the sim backend; nil means real time.
	Clock clock.Clock
	// LogWriter is what Log writes through, whose dropped lines /metrics reports; nil when Log
	// writes elsewhere.
	LogWriter *LogWriter
	// NodeLabels reads the Node's labels for etcd.domain-labels; nil reads them from the
	// Kubernetes API server with the pod's service account.
	NodeLabels NodeLabels
}

// Run runs the agent until ctx is done. On SIGHUP it re-reads the configuration; an invalid
// one is reported and the running configuration stays, and one that is valid but does not
// start (a budget file gone bad, no GPU left to cap) gives way to the previous one again.
func Run(ctx context.Context, cfg *config.Config, o Options) error {
	log := o.Log
	// The SDK's own errors go through the agent's logger, in its format, not through the
	// standard library's logger in plain text.
	exporters.InstallOTelLogging(log)
	g := newGuard(log)
	// One web socket for the agent's whole life: a scrape during a reload waits for the next
	// web server instead of being refused.
	listeners := exporters.NewListeners()
	defer listeners.Close()
	// Goroutines of other packages (exporters, the etcd member, collectors' subscriptions,
	// the simulator) report their panics to the same guard.
	defer panics.Handle(g.handle)()
	if err := resolveDomain(ctx, cfg, o.NodeLabels, log); err != nil {
		return err
	}
	// keep carries the etcd member across a reload that only moves the node to another domain.
	keep := &keptSource{}
	defer keep.close()
	var prev *config.Config
	// held is set while the limits are held by a reload for a controller that has not started.
	held := false
	for starts := 0; ; starts++ {
		var next *config.Config
		var err error
		if starts > 0 && injectedFault() == faultStartAfterReload {
			err = errors.New("start failure injected by " + testFaultEnv)
		} else {
			next, err = runOnce(ctx, cfg, o, g, listeners, keep)
		}
		if err != nil {
			keep.close() // the configuration that was to take it over did not start
		}
		if err != nil && prev != nil {
			log.Error("the reloaded configuration did not start; going back to the previous one", "err", err)
			cfg, prev = prev, nil
			continue
		}
		if err != nil && held {
			// Nothing will steer the limits the reload held: put the originals back before
			// the agent exits on the error.
			restoreHeld(cfg, o.Clock, log)
		}
		if err != nil || next == nil {
			return err
		}
		held = reloadExit(next) == capping.ExitHold
		log.Info("configuration reloaded")
		prev, cfg = cfg, next
	}
}

// runOnce runs one configuration; it returns the next one after a successful reload, or nil
// when ctx is done.
func runOnce(ctx context.Context, cfg *config.Config, o Options, g *guard, listeners *exporters.Listeners, keep *keptSource) (*config.Config, error) {
	log := o.Log
	applyMemory(cfg.Memory, cfg.OTLP.Endpoint != "", log)
	p, err := NewPipeline(cfg, log, o.Clock)
	if err != nil {
		return nil, err
	}
	defer p.Close()

	exp, err := exporters.New(ctx, exporters.Options{Config: cfg, Store: p.Store, Logger: log, Version: version.Version, Stdout: os.Stdout, Listeners: listeners})
	if err != nil {
		return nil, fmt.Errorf("starting exporters: %w", err)
	}
	if err := exp.Start(ctx); err != nil {
		shutdown(exp, log, stopFlush(cfg))
		return nil, fmt.Errorf("starting exporters: %w", err)
	}
	// The last export waits for the receiver on a stop (otlp.shutdown-timeout); on a reload only
	// briefly, so that an OTLP endpoint that is down does not hold collection and /metrics off
	// for its timeout.
	flush := stopFlush(cfg)
	defer func() { shutdown(exp, log, flush) }()

	runCtx, cancel := context.WithCancel(ctx)
	clk := o.Clock
	if clk == nil {
		clk = clock.Real()
	}
	self := newSelfMetrics(p.Store, o.LogWriter, clk.Now)
	self.publish() // before the first scrape
	g.Go("agent metrics", func() { self.run(runCtx) })
	done := make(chan struct{})
	g.Go("collectors", func() {
		defer close(done)
		p.Runner.Run(runCtx)
	})
	// Stop collecting before the exporters flush their last export (deferred above).
	defer func() { cancel(); <-done }()

	// The controller stops first, while the GPU backend is still open.
	capRun, err := startCapping(ctx, cfg, p, o.Clock, log, g, keep)
	if err != nil {
		return nil, fmt.Errorf("starting capping: %w", err)
	}
	// A panic anywhere stops the controller as a stop would (the main goroutine's through the
	// deferred stop below, any other's through the guard).
	g.onPanic(capRun.stop)
	defer g.onPanic(nil)
	defer capRun.stop()

	g.Go("ready", func() {
		select {
		case <-p.Runner.Ready():
			exp.SetReady(true)
			log.Info("agent ready", p.readyAttrs(cfg)...)
			notifySystemd(log, daemon.SdNotifyReady)
			panics.Arm()
			if injectedFault() == faultGoroutinePanic {
				panic("injected by " + testFaultEnv)
			}
		case <-runCtx.Done():
		}
	})
	if cfg.Summary.Interval > 0 && o.Terminal != nil {
		g.Go("summary", func() { printSummaries(runCtx, p.Store, o.Terminal, cfg.Summary.Interval) })
	}

	for {
		select {
		case <-ctx.Done():
			log.Info("stopping")
			notifySystemd(log, daemon.SdNotifyStopping)
			return nil, nil
		case <-o.Hangup:
			if o.Reload == nil {
				continue
			}
			next, err := o.Reload()
			if err == nil {
				err = reloadable(cfg, next)
			}
			if err == nil {
				err = resolveDomain(ctx, next, o.NodeLabels, log)
			}
			if err != nil {
				log.Error("configuration not reloaded; keeping the running one", "err", err)
				continue
			}
			if capRun != nil {
				capRun.setExit(reloadExit(next))
				keep.keep(capRun, cfg, next)
			}
			flush = min(reloadFlush, flush)
			notifySystemd(log, daemon.SdNotifyReloading)
			return next, nil
		}
	}
}

// reloadable refuses a reload that would lose the GPUs' original limits: the state file that
// holds them cannot move while capping runs.
func reloadable(cur, next *config.Config) error {
	if cur.Capping.Enabled && !cur.Capping.DryRun && next.Capping.Enabled && !next.Capping.DryRun &&
		next.Capping.StateFile != cur.Capping.StateFile {
		return fmt.Errorf("capping.state-file: %q cannot change to %q on a reload: it holds the GPUs' original limits (restart the agent to move it)",
			cur.Capping.StateFile, next.Capping.StateFile)
	}
	return nil
}

// reloadExit is what the running controller does with the limits on a reload: hold them for the
// next controller to take over, or, when the next configuration writes no limits (capping off or
// dry-run), what capping.on-exit says, as on a stop.
func reloadExit(next *config.Config) capping.Exit {
	if next.Capping.Enabled && !next.Capping.DryRun {
		return capping.ExitHold
	}
	return capping.ExitConfigured
}

// How long the exporters' last export may take on a reload, and on a stop when the
// configuration leaves otlp.shutdown-timeout at zero.
const (
	reloadFlush         = time.Second
	defaultShutdownWait = 3 * time.Second
)

// stopFlush is how long the exporters' last export may take when the agent stops.
func stopFlush(cfg *config.Config) time.Duration {
	if d := cfg.OTLP.ShutdownTimeout; d > 0 {
		return d
	}
	return defaultShutdownWait
}

func shutdown(exp *exporters.Exporters, log *slog.Logger, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := exp.Shutdown(ctx); err != nil {
		log.Warn("shutting down exporters", "err", err)
	}
}

// Collection is what one collection measured.
type Collection struct {
	Points []DataPoint
	// NoGPU says why no GPU was collected when the GPU backend did not open (no NVIDIA library
	// with gpu.backend auto, gpu.backend none), or is nil.
	NoGPU error
}

// CollectOnce runs one collection of every enabled collector and returns what they measured.
func CollectOnce(ctx context.Context, cfg *config.Config, log *slog.Logger) (Collection, error) {
	p, err := NewPipeline(cfg, log, nil)
	if err != nil {
		return Collection{}, err
	}
	defer p.Close()
	p.Runner.CollectOnce(ctx)
	// The agent's own metrics too, as the running agent exports them (a one-shot collection
	// drops no log line).
	newSelfMetrics(p.Store, nil, time.Now).publish()
	return Collection{Points: Snapshot(p.Store, exporters.NewResource(cfg, version.Version)), NoGPU: p.NoGPU}, nil
}
