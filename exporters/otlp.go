package exporters

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/capstan-power/capstan/internal/config"
)

// Defaults for an OTLP section the loader left at zero.
const (
	defaultOTLPInterval = 10 * time.Second
	defaultOTLPTimeout  = 10 * time.Second
	defaultGRPCPort     = "4317"
	defaultHTTPPort     = "4318"
)

// otlpPeriods returns the export interval and the timeout of one collect-and-export.
func otlpPeriods(c config.OTLP) (interval, timeout time.Duration) {
	interval, timeout = c.Interval, c.Timeout
	if interval <= 0 {
		interval = defaultOTLPInterval
	}
	if timeout <= 0 {
		timeout = defaultOTLPTimeout
	}
	return interval, timeout
}

// newOTLPExporter builds the gRPC or HTTP OTLP metric exporter c describes. It does not connect:
// an endpoint that is down makes exports fail later, not this.
func newOTLPExporter(ctx context.Context, c config.OTLP, log *slog.Logger) (*loggingExporter, error) {
	protocol := strings.ToLower(c.Protocol)
	if protocol == "" {
		protocol = "grpc"
	}
	if protocol != "grpc" && protocol != "http" {
		return nil, fmt.Errorf("configuring OTLP: otlp.protocol %q is neither grpc nor http", c.Protocol)
	}
	ep, err := parseEndpoint(c.Endpoint, protocol, c.Insecure)
	if err != nil {
		return nil, fmt.Errorf("configuring OTLP: %w", err)
	}
	if ep.schemeOverrides {
		log.Warn("otlp.insecure is ignored: the https:// endpoint asks for TLS", "endpoint", c.Endpoint)
	}
	headers, err := mergeHeaders(c.Headers, c.HeadersFile)
	if err != nil {
		return nil, fmt.Errorf("configuring OTLP: %w", err)
	}
	var tlsCfg *tls.Config
	if ep.insecure {
		if c.TLS != (config.TLS{}) {
			log.Warn("otlp.tls is ignored: the OTLP connection is insecure", "endpoint", c.Endpoint)
		}
	} else if tlsCfg, err = clientTLSConfig(c.TLS); err != nil {
		return nil, fmt.Errorf("configuring OTLP: %w", err)
	}
	temporality, err := temporalitySelector(c.Temporality)
	if err != nil {
		return nil, fmt.Errorf("configuring OTLP: %w", err)
	}
	gzip, err := useGzip(c.Compression)
	if err != nil {
		return nil, fmt.Errorf("configuring OTLP: %w", err)
	}
	interval, timeout := otlpPeriods(c)

	// Retry: the exporters' default (exponential backoff from 5 s, given up after a minute) is on
	// unless disabled, and it is bounded by the export timeout, so a down endpoint costs one
	// blocked export per interval and holds no more than the current collection.
	var exp sdkmetric.Exporter
	switch protocol {
	case "grpc":
		opts := []otlpmetricgrpc.Option{
			otlpmetricgrpc.WithEndpoint(ep.hostport),
			otlpmetricgrpc.WithTimeout(timeout),
			otlpmetricgrpc.WithTemporalitySelector(temporality),
			// gRPC's reconnect backoff grows to two minutes by default: a collector that comes
			// back would then wait that long for data. Cap it at the export interval.
			otlpmetricgrpc.WithDialOption(grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           reconnectBackoff(interval),
				MinConnectTimeout: 20 * time.Second,
			})),
		}
		if len(headers) > 0 {
			opts = append(opts, otlpmetricgrpc.WithHeaders(headers))
		}
		if gzip {
			opts = append(opts, otlpmetricgrpc.WithCompressor("gzip"))
		}
		if ep.insecure {
			opts = append(opts, otlpmetricgrpc.WithInsecure())
		} else if tlsCfg != nil {
			opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(tlsCfg)))
		}
		exp, err = otlpmetricgrpc.New(ctx, opts...)
	case "http":
		opts := []otlpmetrichttp.Option{
			otlpmetrichttp.WithEndpoint(ep.hostport),
			otlpmetrichttp.WithTimeout(timeout),
			otlpmetrichttp.WithTemporalitySelector(temporality),
		}
		if ep.path != "" {
			opts = append(opts, otlpmetrichttp.WithURLPath(ep.path))
		}
		if len(headers) > 0 {
			opts = append(opts, otlpmetrichttp.WithHeaders(headers))
		}
		if gzip {
			opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
		} else {
			opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.NoCompression))
		}
		if ep.insecure {
			opts = append(opts, otlpmetrichttp.WithInsecure())
		} else if tlsCfg != nil {
			opts = append(opts, otlpmetrichttp.WithTLSClientConfig(tlsCfg))
		}
		exp, err = otlpmetrichttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("creating the OTLP %s exporter for %s: %w", protocol, c.Endpoint, err)
	}
	return &loggingExporter{Exporter: exp, log: log, endpoint: c.Endpoint, gc: newExportGC()}, nil
}

// reconnectBackoff is gRPC's default backoff with its ceiling lowered to the export interval
// (at least a second).
func reconnectBackoff(interval time.Duration) backoff.Config {
	b := backoff.DefaultConfig
	b.MaxDelay = max(interval, time.Second)
	if b.BaseDelay > b.MaxDelay {
		b.BaseDelay = b.MaxDelay
	}
	return b
}

// endpoint is otlp.endpoint taken apart.
type endpoint struct {
	hostport string
	// path is the HTTP path; empty means the exporter's default, /v1/metrics.
	path     string
	insecure bool
	// schemeOverrides is set when an https:// URL contradicts otlp.insecure.
	schemeOverrides bool
}

// parseEndpoint accepts host:port (otlp.insecure decides TLS) or a URL: http:// is plaintext,
// https:// is TLS, a missing port is the scheme's. A URL without a path (or "/") posts to the
// default /v1/metrics, as OTEL_EXPORTER_OTLP_ENDPOINT does; another path is used as given.
func parseEndpoint(raw, protocol string, insecure bool) (endpoint, error) {
	if !strings.Contains(raw, "://") {
		hostport, err := withDefaultPort(raw, map[string]string{"grpc": defaultGRPCPort, "http": defaultHTTPPort}[protocol])
		if err != nil {
			return endpoint{}, fmt.Errorf("parsing otlp.endpoint %q: %w", raw, err)
		}
		return endpoint{hostport: hostport, insecure: insecure}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, fmt.Errorf("parsing otlp.endpoint %q: %w", raw, err)
	}
	var ep endpoint
	var port string
	switch u.Scheme {
	case "http":
		ep.insecure, port = true, "80"
	case "https":
		ep.insecure, port = false, "443"
		ep.schemeOverrides = insecure
	default:
		return endpoint{}, fmt.Errorf("parsing otlp.endpoint %q: scheme %q is neither http nor https", raw, u.Scheme)
	}
	if u.Host == "" {
		return endpoint{}, fmt.Errorf("parsing otlp.endpoint %q: no host", raw)
	}
	if ep.hostport, err = withDefaultPort(u.Host, port); err != nil {
		return endpoint{}, fmt.Errorf("parsing otlp.endpoint %q: %w", raw, err)
	}
	if protocol == "http" && u.Path != "" && u.Path != "/" {
		ep.path = u.Path
	}
	return ep, nil
}

func withDefaultPort(hostport, port string) (string, error) {
	if hostport == "" {
		return "", errors.New("empty host")
	}
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		// No port (or not host:port at all, which the check below catches).
		host, p = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), port
	}
	if host == "" || p == "" || strings.ContainsAny(host, "[]/ \t") {
		return "", fmt.Errorf("%q is not a host or host:port", hostport)
	}
	return net.JoinHostPort(host, p), nil
}

// mergeHeaders returns the headers of otlp.headers overlaid with those of otlp.headers-file
// (the file wins per key, so a secret mounted as a file replaces a placeholder in the config).
func mergeHeaders(inline map[string]string, file string) (map[string]string, error) {
	out := make(map[string]string, len(inline))
	for k, v := range inline {
		out[k] = v
	}
	if file == "" {
		return out, nil
	}
	fromFile, err := readHeadersFile(file)
	if err != nil {
		return nil, err
	}
	for k, v := range fromFile {
		out[k] = v
	}
	return out, nil
}

// readHeadersFile reads `key=value` or `key: value` lines; blank lines and lines starting with #
// are skipped. The first '=' or ':' separates key and value, so values may contain either.
func readHeadersFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading OTLP headers file: %w", err)
	}
	defer f.Close()
	out := make(map[string]string)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.IndexAny(line, "=:")
		if i < 0 {
			return nil, fmt.Errorf("reading OTLP headers file %s:%d: want key=value or key: value", path, n)
		}
		key, value := strings.TrimSpace(line[:i]), strings.TrimSpace(line[i+1:])
		if key == "" || strings.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("reading OTLP headers file %s:%d: bad header name %q", path, n, key)
		}
		out[key] = value
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading OTLP headers file %s: %w", path, err)
	}
	return out, nil
}

// clientTLSConfig builds the TLS client configuration from PEM files; nil (system roots, no
// client certificate) when none is named. Errors name the offending file.
func clientTLSConfig(t config.TLS) (*tls.Config, error) {
	if t == (config.TLS{}) {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		b, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading OTLP CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("reading OTLP CA file %s: no PEM certificate in it", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("reading OTLP client certificate: otlp.tls.cert-file and otlp.tls.key-file must be given together")
	}
	if t.CertFile != "" {
		certPEM, err := readPEM(t.CertFile, "client certificate")
		if err != nil {
			return nil, err
		}
		keyPEM, err := readPEM(t.KeyFile, "client key")
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("loading OTLP client certificate %s with key %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// readPEM reads a file that must hold at least one PEM block.
func readPEM(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading OTLP %s file: %w", what, err)
	}
	if block, _ := pem.Decode(b); block == nil {
		return nil, fmt.Errorf("reading OTLP %s file %s: no PEM data in it", what, path)
	}
	return b, nil
}

// temporalitySelector maps otlp.temporality to the SDK's selector. "delta" follows the OTel
// spec's delta preference: counters (which is what Capstan's energy, bytes and errors are) go
// out as deltas; up-down counters stay cumulative, because a delta of a level (memory in use)
// is useless to most backends.
func temporalitySelector(s string) (sdkmetric.TemporalitySelector, error) {
	switch strings.ToLower(s) {
	case "", "cumulative":
		return sdkmetric.DefaultTemporalitySelector, nil
	case "delta":
		return func(k sdkmetric.InstrumentKind) metricdata.Temporality {
			switch k {
			case sdkmetric.InstrumentKindCounter, sdkmetric.InstrumentKindObservableCounter, sdkmetric.InstrumentKindHistogram:
				return metricdata.DeltaTemporality
			}
			return metricdata.CumulativeTemporality
		}, nil
	}
	return nil, fmt.Errorf("otlp.temporality %q is neither cumulative nor delta", s)
}

func useGzip(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "gzip":
		return true, nil
	case "", "none":
		return false, nil
	}
	return false, fmt.Errorf("otlp.compression %q is neither gzip nor none", s)
}

// loggingExporter logs OTLP export failures itself, once when exports start failing and once
// when they recover, instead of the SDK's global error handler printing every failure.
type loggingExporter struct {
	sdkmetric.Exporter
	log      *slog.Logger
	endpoint string
	failing  atomic.Bool
	// gc collects the heap after exports (exportGC).
	gc *exportGC
	// final is set by Shutdown: the last export's error is returned to the caller, whereas
	// periodic failures are only logged (the periodic reader would hand them to the global
	// error handler and log them a second time).
	final atomic.Bool
}

// Export sends rm and reports a failure as described on loggingExporter.
func (x *loggingExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	err := x.Exporter.Export(ctx, rm)
	if x.gc != nil {
		x.gc.after()
	}
	switch {
	case err != nil && !x.failing.Swap(true):
		x.log.Warn("OTLP export failed; the data of failed exports is dropped and export is retried every interval",
			"endpoint", x.endpoint, "err", err)
	case err != nil:
		x.log.Debug("OTLP export failed again", "endpoint", x.endpoint, "err", err)
	case x.failing.Swap(false):
		x.log.Info("OTLP export recovered", "endpoint", x.endpoint)
	}
	if err != nil && x.final.Load() {
		return fmt.Errorf("exporting to OTLP endpoint %s: %w", x.endpoint, err)
	}
	return nil
}
