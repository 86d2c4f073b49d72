package exporters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/capstan-power/capstan/internal/panics"
)

// newHandler serves /metrics, /healthz, /readyz and a landing page on /.
func (e *Exporters) newHandler(version string) http.Handler {
	mux := http.NewServeMux()
	// promhttp_metric_handler_requests_total and _in_flight, as promhttp's handler had them.
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(e.prom.registry, e.prom))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !e.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "Capstan",
		Description: "GPU telemetry and power-capping agent",
		Version:     version,
		Profiling:   "false",
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/healthz", Text: "Health", Description: "200 while the agent runs"},
			{Address: "/readyz", Text: "Readiness", Description: "200 once every collector has reported"},
		},
	})
	if err != nil {
		// The page is fixed text; a template failure is a bug, and /metrics matters more.
		e.log.Error("building the landing page", "err", err)
	} else {
		mux.Handle("/", landing)
	}
	return mux
}

// Start serves the web endpoints when web.listen-address is set. It returns once the listener is
// bound; later serve errors are logged. TLS and basic auth come from the exporter-toolkit web
// config file, which is checked here so that a bad file fails Start rather than a goroutine.
func (e *Exporters) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return errors.New("starting exporters: already started")
	}
	e.started = true
	if e.handler == nil {
		return nil
	}
	addr := e.cfg.Web.ListenAddress
	configFile := e.cfg.Web.Config.File
	if configFile != "" {
		if err := web.Validate(configFile); err != nil {
			return fmt.Errorf("checking web config file %s: %w", configFile, err)
		}
	}
	var l net.Listener
	var err error
	if e.listeners != nil {
		l, err = e.listeners.listen(ctx, addr)
	} else {
		var lc net.ListenConfig
		l, err = lc.Listen(ctx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler: e.handler,
		// Bounds what a slow or idle client holds; a scrape of this size takes milliseconds.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelWarn),
	}
	conns := newWebConns()
	srv.ConnState = conns.track
	flags := &web.FlagConfig{
		WebListenAddresses: &[]string{l.Addr().String()},
		WebSystemdSocket:   new(bool),
		WebConfigFile:      &configFile,
	}
	done := make(chan struct{})
	e.server, e.listener, e.conns, e.serveDone = srv, l, conns, done
	panics.Go("web server", func() {
		defer close(done)
		// Serve closes l itself, except when it fails before serving (a config file that became
		// unreadable since Validate).
		defer l.Close()
		// stopServer closes l: Serve then returns net.ErrClosed.
		if err := web.Serve(l, srv, flags, e.log); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			e.log.Error("web server stopped; /metrics, /healthz and /readyz are unavailable", "address", l.Addr().String(), "err", err)
		}
	})
	return nil
}

// Addr returns the address the web server listens on, or nil before Start or without one.
func (e *Exporters) Addr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.listener == nil {
		return nil
	}
	return e.listener.Addr()
}

// stopServer stops accepting, answers the requests on the connections already accepted (bounded
// by ctx; see drainServer) and waits for the serve goroutine.
func (e *Exporters) stopServer(ctx context.Context) error {
	e.mu.Lock()
	srv, l, conns, done := e.server, e.listener, e.conns, e.serveDone
	e.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := drainServer(ctx, srv, l, conns, done); err != nil {
		return fmt.Errorf("stopping the web server: %w", err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("stopping the web server: %w", ctx.Err())
	}
	return nil
}
