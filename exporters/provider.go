// Package exporters ships what the collectors measured: OTLP push (gRPC or HTTP), a Prometheus
// pull endpoint and, for debugging, stdout.
//
// Exporters never call a source. Every reader of the one OpenTelemetry MeterProvider (OTLP,
// Prometheus, stdout) has its own storeProducer, an sdkmetric.Producer that walks the sample
// store: a reader's collection (an OTLP export, a Prometheus scrape, a stdout dump) costs one
// walk of the store and no NVML call. A producer rather than observable instruments, because
// the SDK's instruments rebuild their per-series state on every collection, and a producer
// reuses its output: a steady-state collection allocates almost nothing (see storeProducer).
//
// The Prometheus endpoint renders its reader's collections as text itself (see promExposition)
// instead of going through the OTel Prometheus exporter and client_golang, which build
// descriptors, label pairs and maps for every point of every scrape.
package exporters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/sample"
)

// ScopeName is the instrumentation scope every Capstan metric is reported under.
const ScopeName = "github.com/capstan-power/capstan"

// Resource attribute keys (OpenTelemetry semantic conventions). Plain keys rather than a semconv
// package, so the resource carries no schema URL that could conflict with a detector's.
const (
	attrServiceName    = "service.name"
	attrServiceVersion = "service.version"
	attrHostName       = "host.name"
	attrK8sNodeName    = "k8s.node.name"
)

// Options are what New needs.
type Options struct {
	// Config supplies the otlp, web, stdout and node sections.
	Config *config.Config
	// Store is where the collectors put their batches.
	Store *sample.Store
	// Logger receives export failures and web server errors; nil discards them.
	Logger *slog.Logger
	// Version is reported as service.version.
	Version string
	// Stdout is where the stdout exporter writes; nil means os.Stdout.
	Stdout io.Writer
	// Listeners, when set, keeps the web server's socket open across the agent's reloads.
	Listeners *Listeners
}

// Exporters owns the MeterProvider, its readers and the web server.
type Exporters struct {
	cfg *config.Config
	log *slog.Logger

	provider *sdkmetric.MeterProvider

	// otlp is nil when no OTLP endpoint is configured.
	otlp *loggingExporter

	// prom and handler are nil when no web listen address is configured.
	prom    *promExposition
	handler http.Handler
	ready   atomic.Bool

	listeners *Listeners

	mu        sync.Mutex
	started   bool
	server    *http.Server
	listener  net.Listener
	conns     *webConns
	serveDone chan struct{}

	shutdownOnce sync.Once
	shutdownErr  error
}

// New builds the resource, the readers (OTLP, Prometheus, stdout, each only when configured),
// each with its own producer over the store, and the MeterProvider. An OTLP endpoint that is
// down is not an error: exports fail, are logged and retried every interval.
func New(ctx context.Context, o Options) (*Exporters, error) {
	if o.Config == nil || o.Store == nil {
		return nil, errors.New("building exporters: Config and Store are required")
	}
	cfg := o.Config
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stdout := o.Stdout
	if stdout == nil {
		stdout = os.Stdout
	}
	e := &Exporters{cfg: cfg, log: log, listeners: o.Listeners}
	scope := instrumentation.Scope{Name: ScopeName, Version: o.Version}

	res, err := newResource(ctx, cfg, o.Version)
	if err != nil {
		// Partial resource: typically no readable /etc/machine-id, so no host.id.
		log.Debug("resource detection incomplete", "err", err)
	}

	// Every reader is built before the provider, so an error leaves nothing running except the
	// exporters made so far, which closeAll shuts down.
	var readers []sdkmetric.Reader
	var made []sdkmetric.Exporter
	closeAll := func() {
		for _, x := range made {
			_ = x.Shutdown(context.Background())
		}
	}

	if cfg.OTLP.Endpoint != "" {
		x, err := newOTLPExporter(ctx, cfg.OTLP, log)
		if err != nil {
			closeAll()
			return nil, err
		}
		made = append(made, x)
		e.otlp = x
		interval, timeout := otlpPeriods(cfg.OTLP)
		// The producer follows the exporter's temporality (otlp.temporality).
		readers = append(readers, sdkmetric.NewPeriodicReader(x,
			sdkmetric.WithInterval(interval), sdkmetric.WithTimeout(timeout),
			sdkmetric.WithProducer(newStoreProducer[struct{}](o.Store, scope, x.Temporality).withMetricFilter(cfg.Metrics.Enabled))))
	}

	if cfg.Web.ListenAddress != "" {
		x, err := newPromExposition(o.Store, scope, cfg.Metrics.Enabled, log)
		if err != nil {
			closeAll()
			return nil, err
		}
		e.prom = x
		e.handler = e.newHandler(o.Version)
		readers = append(readers, x.reader)
	}

	if cfg.Stdout.Enabled {
		x, reader, err := newStdoutReader(stdout, cfg.Stdout, o.Store, scope, cfg.Metrics.Enabled)
		if err != nil {
			closeAll()
			return nil, err
		}
		made = append(made, x)
		readers = append(readers, reader)
	}

	e.provider = newMeterProvider(res, readers...)
	return e, nil
}

// newMeterProvider builds the provider over readers. It holds no instruments of Capstan's own:
// each reader's producer supplies the store's data. It is kept because the SDK's readers need
// one, and for instruments other parts of the agent may register.
func newMeterProvider(res *resource.Resource, readers ...sdkmetric.Reader) *sdkmetric.MeterProvider {
	opts := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		// Nothing measured through the provider happens inside a sampled span of interest:
		// exemplars could only cost a reservoir per series.
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter),
	}
	for _, r := range readers {
		opts = append(opts, sdkmetric.WithReader(r))
	}
	return sdkmetric.NewMeterProvider(opts...)
}

// ForceFlush makes every push reader (OTLP, stdout) export what it holds now.
func (e *Exporters) ForceFlush(ctx context.Context) error { return e.provider.ForceFlush(ctx) }

// SetReady sets what /readyz answers: 200 when ready, else 503.
func (e *Exporters) SetReady(ready bool) { e.ready.Store(ready) }

// Shutdown stops the web server, then shuts the provider down, which makes one last OTLP (and
// stdout) export of the latest samples. It is safe to call more than once.
func (e *Exporters) Shutdown(ctx context.Context) error {
	e.shutdownOnce.Do(func() {
		var errs []error
		if err := e.stopServer(ctx); err != nil {
			errs = append(errs, err)
		}
		if e.otlp != nil {
			// From here on the caller wants to hear that the last export failed.
			e.otlp.final.Store(true)
		}
		if err := e.provider.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flushing and shutting down metric readers: %w", err))
		}
		e.shutdownErr = errors.Join(errs...)
	})
	return e.shutdownErr
}

// NewResource returns the resource every export carries: service.name=capstan, service.version,
// host.name (cfg.Node.Name, else the hostname), host.id (from /etc/machine-id when readable),
// k8s.node.name (when $NODE_NAME is set), telemetry.sdk.*, and whatever OTEL_RESOURCE_ATTRIBUTES
// adds. No detector reaches the network.
func NewResource(cfg *config.Config, version string) *resource.Resource {
	res, _ := newResource(context.Background(), cfg, version)
	return res
}

func newResource(ctx context.Context, cfg *config.Config, version string) (*resource.Resource, error) {
	host := cfg.Node.Name
	if host == "" {
		host, _ = os.Hostname()
	}
	attrs := []attribute.KeyValue{
		attribute.String(attrServiceName, "capstan"),
		attribute.String(attrServiceVersion, version),
	}
	if host != "" {
		attrs = append(attrs, attribute.String(attrHostName, host))
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		attrs = append(attrs, attribute.String(attrK8sNodeName, n))
	}
	// Later options win on a shared key: OTEL_RESOURCE_ATTRIBUTES may add attributes (a cluster
	// name, an environment) but not rename the service or the host.
	res, err := resource.New(ctx,
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
		resource.WithHostID(),
		resource.WithAttributes(attrs...),
	)
	if res == nil {
		res = resource.NewSchemaless(attrs...)
	}
	if err != nil {
		return res, fmt.Errorf("detecting resource attributes: %w", err)
	}
	return res, nil
}

// InstallOTelLogging routes the OpenTelemetry SDK's global error handler and internal logger to
// log. Without it the SDK prints to stderr in its own format. It changes process-wide state, so
// the agent calls it once at start rather than New calling it.
func InstallOTelLogging(log *slog.Logger) {
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("OpenTelemetry SDK error", "err", err)
	}))
	otel.SetLogger(logr.FromSlogHandler(log.Handler()))
}
