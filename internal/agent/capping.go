package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/config"
)

// cappingRun is a running controller and how to stop it.
type cappingRun struct {
	ctl    *capping.Controller
	cancel context.CancelFunc
	done   chan struct{}
	log    *slog.Logger
	// exit is what stop does with the limits: the configured on_exit on SIGTERM, hold on a
	// reload (the next configuration's controller takes the limits over as they are).
	exit capping.Exit
}

// startCapping starts the power controller when capping is enabled; it returns nil when not.
// It needs the pipeline's GPU backend, and publishes into the pipeline's store.
func startCapping(ctx context.Context, cfg *config.Config, p *Pipeline, clock sim.Clock, log *slog.Logger) (*cappingRun, error) {
	if !cfg.Capping.Enabled {
		return nil, nil
	}
	if p.GPU == nil {
		return nil, errors.New("capping.enabled needs a GPU backend, and none is available (see gpu.backend)")
	}
	if clock == nil {
		clock = sim.RealClock()
	}
	src, err := capping.SourceFrom(cfg, clock.Now, log)
	if err != nil {
		return nil, err
	}
	ctl, err := capping.New(capping.Options{Settings: capping.SettingsFrom(cfg), Lib: p.GPU.Lib, Budget: src, Store: p.Store, Log: log, Now: clock.Now})
	if err != nil {
		return nil, err
	}
	if err := ctl.Start(); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	r := &cappingRun{ctl: ctl, cancel: cancel, done: make(chan struct{}), log: log}
	go func() {
		defer close(r.done)
		ctl.Run(runCtx)
	}()
	return r, nil
}

// stop ends the control loop, then applies r.exit to the limits.
func (r *cappingRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
	if err := r.ctl.Stop(r.exit); err != nil {
		r.log.Error("stopping capping", "err", err)
	}
}
