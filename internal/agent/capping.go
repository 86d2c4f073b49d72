package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/rapl"
	"github.com/capstan-power/capstan/internal/sample"
)

// cappingRun is a running controller and how to stop it.
type cappingRun struct {
	ctl    *capping.Controller
	src    *budgetSource
	host   *rapl.Packages // nil unless capping.scope is node and the host has RAPL
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
	// exit is what stop does with the limits: the configured on_exit on SIGTERM, hold on a
	// reload (the next configuration's controller takes the limits over as they are).
	exit atomic.Int64
	// stopped makes stop run once: from the main goroutine's exit path and from a panicking
	// goroutine's guard, whichever comes first; the other waits for it to finish.
	stopped sync.Once
}

// budgetSource is the node's budget source and the connection it holds open.
type budgetSource struct {
	budget.Source
	// conn is the etcd client of budget.source etcd; nil for the others.
	conn io.Closer
	// left is closed once the source has left its upstream (the etcd member revoked its
	// lease); nil when there is nothing to wait for.
	left <-chan struct{}
	// member is the etcd source's membership of its group, which runs on the agent's context
	// rather than the controller's, so that a reload can keep it (see keptSource); cancel
	// stops it, nil until it runs.
	member *cluster.Member
	cancel context.CancelFunc
	// kept: a reload carries the source to the next configuration; stopping the controller
	// leaves it running.
	kept atomic.Bool
}

// close lets go of the source's connection. After the source ran, it first stops it and waits
// (a bounded time) for it to leave, so the group sees the node go at once.
func (s *budgetSource) close() error {
	if s == nil || s.conn == nil {
		return nil
	}
	if s.cancel != nil {
		s.cancel()
		if s.left != nil {
			select {
			case <-s.left:
			case <-time.After(5 * time.Second):
			}
		}
	}
	return s.conn.Close()
}

// newBudgetSource builds the budget source the configuration names: the one place that
// chooses between static, file and etcd. A file source is polled once per control period, so a
// change applies within one period.
func newBudgetSource(cfg *config.Config, p *Pipeline, now func() time.Time, log *slog.Logger) (*budgetSource, error) {
	switch cfg.Budget.Source {
	case "static":
		s, err := budget.NewStatic(float64(cfg.Budget.Watts), now())
		if err != nil {
			return nil, err
		}
		return &budgetSource{Source: s}, nil
	case "file":
		return &budgetSource{Source: budget.NewFile(cfg.Budget.File, cfg.Capping.Period, now, log)}, nil
	case "etcd":
		m, cli, err := cluster.FromConfig(cfg, p.Store, log, now)
		if err != nil {
			return nil, err
		}
		return &budgetSource{Source: memberSource{budget.NewEtcd(m, now)}, conn: cli, left: m.Stopped(), member: m}, nil
	}
	return nil, fmt.Errorf("budget.source %q is not one of static, file, etcd", cfg.Budget.Source)
}

// hostPower is the CPU packages' RAPL power that capping.scope node adds to the measured power,
// read by the controller itself every period; nil with scope gpu or on a host without RAPL
// (the controller then says it measures GPU power only).
func hostPower(cfg *config.Config, now func() time.Time, log *slog.Logger) *rapl.Packages {
	if cfg.Capping.Scope != "node" {
		return nil
	}
	pk := rapl.OpenPackages(cfg.Path.Sysfs, now, log)
	if pk.Len() == 0 {
		_ = pk.Close()
		return nil
	}
	pk.PackageWatts() // the first reading starts the interval the first period measures
	return pk
}

// startCapping starts the power controller when capping is enabled; it returns nil when not.
// It needs the pipeline's GPU backend, and publishes into the pipeline's store.
func startCapping(ctx context.Context, cfg *config.Config, p *Pipeline, clk clock.Clock, log *slog.Logger, g *guard, keep *keptSource) (*cappingRun, error) {
	if !cfg.Capping.Enabled {
		return nil, nil
	}
	if p.GPU == nil {
		return nil, errors.New("capping.enabled needs a GPU backend, and none is available (see gpu.backend)")
	}
	if clk == nil {
		clk = clock.Real()
	}
	src := keep.take(cfg, p.Store)
	if src == nil {
		var err error
		if src, err = newBudgetSource(cfg, p, clk.Now, log); err != nil {
			return nil, err
		}
	}
	host := hostPower(cfg, clk.Now, log)
	opts := capping.Options{Settings: capping.SettingsFrom(cfg), Lib: p.GPU.Lib, Budget: src.Source, Store: p.Store, Log: log, Now: clk.Now}
	if host != nil {
		opts.Host = host
	}
	ctl, err := capping.New(opts)
	if err == nil {
		err = ctl.Start()
	}
	if err != nil {
		_ = src.close()
		_ = host.Close()
		return nil, err
	}
	src.run(ctx, g)
	runCtx, cancel := context.WithCancel(ctx)
	r := &cappingRun{ctl: ctl, src: src, host: host, cancel: cancel, done: make(chan struct{}), log: log}
	g.Go("capping", func() {
		defer close(r.done)
		ctl.Run(runCtx)
	})
	return r, nil
}

// stop ends the control loop, then applies r.exit to the limits and lets go of the budget
// source and the RAPL counters.
// setExit says what stop does with the limits; a reload sets it while a panicking goroutine may
// be stopping the controller.
func (r *cappingRun) setExit(e capping.Exit) { r.exit.Store(int64(e)) }

func (r *cappingRun) stop() {
	if r == nil {
		return
	}
	r.stopped.Do(r.stopOnce)
}

func (r *cappingRun) stopOnce() {
	r.cancel()
	<-r.done
	if err := r.ctl.Stop(capping.Exit(r.exit.Load())); err != nil {
		r.log.Error("stopping capping", "err", err)
	}
	// A source a reload keeps goes on to the next configuration's controller.
	if !r.src.kept.Load() {
		if err := r.src.close(); err != nil {
			r.log.Warn("closing the budget source", "err", err)
		}
	}
	_ = r.host.Close()
}

// restoreHeld writes back the original limits that a reload held for a controller that never
// started, when capping.on-exit is restore: the agent is about to exit on an error, and nothing
// else would put them back before the next start. It goes through a controller that restores
// from the state file without saving it first, within the floor the holding configuration knew.
// With on-exit keep the limits stay, and only the state file is marked clean.
func restoreHeld(cfg *config.Config, clk clock.Clock, log *slog.Logger) {
	if !cfg.Capping.Enabled || cfg.Capping.DryRun {
		return
	}
	if cfg.Capping.OnExit != "restore" {
		// The held limits stay; the state file must say so, which the reload could not
		// mark on a full disk, or the next start takes them for a crash's.
		if err := capping.KeepFromState(cfg.Capping.StateFile); err != nil {
			log.Error("capping: the state file could not be marked clean; the next start takes the held limits for a crash's",
				"state_file", cfg.Capping.StateFile, "err", err)
		}
		return
	}
	if clk == nil {
		clk = clock.Real()
	}
	log.Warn("capping: restoring the GPU limits a reload held, before exiting", "state_file", cfg.Capping.StateFile)
	fail := func(err error) {
		log.Error("capping: the held GPU limits could not be restored; the next start restores them from the state file",
			"state_file", cfg.Capping.StateFile, "err", err)
	}
	backend, err := openBackend(cfg, clk, log)
	if err != nil {
		fail(err)
		return
	}
	defer func() { _ = backend.Shutdown() }()
	// The budget is never used: the controller stops before its first period.
	src, err := budget.NewStatic(1, clk.Now())
	if err != nil {
		fail(err)
		return
	}
	ctl, err := capping.New(capping.Options{Settings: capping.SettingsFrom(cfg), Lib: backend.Lib, Budget: src,
		Store: sample.NewStore(), Log: log, Now: clk.Now})
	if err == nil {
		// Nothing is saved first: the held limits go back even when the state file's disk
		// is full, which may be why no configuration started.
		err = ctl.RestoreFromState()
	}
	if err != nil {
		fail(err)
	}
}
