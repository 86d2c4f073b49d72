package agent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/capstan-power/capstan/capping"
	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/clock"
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
	// closeEtcd closes the etcd client of budget.source etcd, after the controller stopped.
	closeEtcd func() error
}

// startCapping starts the power controller when capping is enabled; it returns nil when not.
// It needs the pipeline's GPU backend, and publishes into the pipeline's store.
func startCapping(ctx context.Context, cfg *config.Config, p *Pipeline, clk clock.Clock, log *slog.Logger) (*cappingRun, error) {
	if !cfg.Capping.Enabled {
		return nil, nil
	}
	if p.GPU == nil {
		return nil, errors.New("capping.enabled needs a GPU backend, and none is available (see gpu.backend)")
	}
	if clk == nil {
		clk = clock.Real()
	}
	var (
		src       budget.Source
		closeEtcd func() error
		abandon   = func() {} // closes the etcd client when capping fails to start
		err       error
	)
	if cfg.Budget.Source == "etcd" {
		m, cli, err := cluster.FromConfig(cfg, p.Store, log, clk.Now)
		if err != nil {
			return nil, err
		}
		src = budget.NewEtcd(m, clk.Now)
		abandon = func() { _ = cli.Close() }
		closeEtcd = func() error {
			// Let the member revoke its lease first, so the group sees the node leave at once.
			select {
			case <-m.Stopped():
			case <-time.After(5 * time.Second):
			}
			return cli.Close()
		}
	} else if src, err = capping.SourceFrom(cfg, clk.Now, log); err != nil {
		return nil, err
	}
	ctl, err := capping.New(capping.Options{Settings: capping.SettingsFrom(cfg), Lib: p.GPU.Lib, Budget: src, Store: p.Store, Log: log, Now: clk.Now})
	if err != nil {
		abandon()
		return nil, err
	}
	if err := ctl.Start(); err != nil {
		abandon()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	r := &cappingRun{ctl: ctl, cancel: cancel, done: make(chan struct{}), log: log, closeEtcd: closeEtcd}
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
	if r.closeEtcd != nil {
		_ = r.closeEtcd()
	}
}
