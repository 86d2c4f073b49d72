package exporters

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/client"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
	"github.com/capstan-power/capstan/internal/testpki"
)

// receiverOpts configures the Collector's OTLP receiver a test starts.
type receiverOpts struct {
	protocol string // grpc or http
	addr     string
	// tls, when set, makes the receiver serve TLS and require a client certificate.
	tls *testpki.PKI
}

// startReceiver starts the OpenTelemetry Collector's own OTLP receiver with request metadata
// passed on to the sink, and stops it when the test ends.
func startReceiver(t *testing.T, o receiverOpts) *consumertest.MetricsSink {
	t.Helper()
	var tls *otlptest.ServerTLS
	if o.tls != nil {
		tls = &otlptest.ServerTLS{CertFile: o.tls.ServerCert, KeyFile: o.tls.ServerKey, ClientCAFile: o.tls.CAFile}
	}
	_, sink := otlptest.Start(t, otlptest.Options{Protocol: o.protocol, Addr: o.addr, TLS: tls})
	return sink
}

// received is one data point as the receiver got it, with its metric and resource.
type received struct {
	metric   pmetric.Metric
	dp       pmetric.NumberDataPoint
	resource pcommon.Map
}

// findPoints returns every received data point of metric name whose attributes include want.
func findPoints(sink *consumertest.MetricsSink, name string, want map[string]any) []received {
	var out []received
	for _, p := range otlptest.Points(sink) {
		if p.Metric.Name() == name && hasAttrs(p.DP.Attributes(), want) {
			out = append(out, received{metric: p.Metric, dp: p.DP, resource: p.Resource})
		}
	}
	return out
}

func hasAttrs(m pcommon.Map, want map[string]any) bool {
	got := m.AsRaw()
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// latest returns the last point of name with attributes want, failing the test when none came.
func latest(t *testing.T, sink *consumertest.MetricsSink, name string, want map[string]any) received {
	t.Helper()
	pts := findPoints(sink, name, want)
	if len(pts) == 0 {
		t.Fatalf("no %s point with %v received", name, want)
	}
	return pts[len(pts)-1]
}

func gpu0(extra ...any) map[string]any {
	m := map[string]any{"hw.type": "gpu", "hw.id": gpuUUID(0), "hw.name": "NVIDIA H100 80GB HBM3", "gpu.index": int64(0)}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i].(string)] = extra[i+1]
	}
	return m
}

func otlpConfig(protocol, endpoint string) *config.Config {
	cfg := testConfig()
	cfg.OTLP = config.OTLP{
		Endpoint: endpoint, Protocol: protocol, Insecure: true,
		Interval: time.Second, Timeout: 5 * time.Second, Compression: "gzip",
	}
	return cfg
}

// TestOTLPEndToEnd exports a GPU collection to the Collector's OTLP receiver over gRPC and over
// HTTP and checks what a backend would store: names, units, kinds, attributes, values and the
// resource.
func TestOTLPEndToEnd(t *testing.T) {
	t.Setenv("NODE_NAME", "k8s-node-a")
	// endpoint is otlp.endpoint with %s for the receiver's address.
	for _, tc := range []struct {
		protocol, endpoint string
		insecure           bool
	}{
		{"grpc", "%s", true},                    // host:port, plaintext from otlp.insecure
		{"grpc", "http://%s/", false},           // a URL: plaintext from the scheme
		{"http", "%s", true},                    // host:port over HTTP
		{"http", "http://%s", false},            // a base URL: default /v1/metrics path
		{"http", "http://%s/v1/metrics", false}, // the full signal URL
	} {
		name := tc.protocol + "/" + strings.NewReplacer("%s", "addr", "/", "_").Replace(tc.endpoint)
		t.Run(name, func(t *testing.T) {
			addr := otlptest.FreeAddr(t)
			sink := startReceiver(t, receiverOpts{protocol: tc.protocol, addr: addr})
			endpoint := strings.Replace(tc.endpoint, "%s", addr, 1)

			store := sample.NewStore()
			f := newFleet(2)
			store.Put("gpu", f.batch(5000))
			cfg := otlpConfig(tc.protocol, endpoint)
			cfg.OTLP.Insecure = tc.insecure
			log, logs := testkit.NewLogger()
			startExporters(t, Options{Config: cfg, Store: store, Logger: log, Version: "1.2.3-test"})
			testkit.WaitFor(t, "metrics at the receiver", func() bool { return len(findPoints(sink, "hw.power", nil)) > 0 })
			checkGPUExport(t, sink)
			if n := logs.Count("OTLP export failed"); n > 0 {
				t.Errorf("export failures logged:\n%s", logs)
			}
		})
	}
}

// checkGPUExport checks the export of newFleet(2).batch(5000).
func checkGPUExport(t *testing.T, sink *consumertest.MetricsSink) {
	t.Helper()
	power := latest(t, sink, "hw.power", gpu0())
	if power.metric.Unit() != "W" || power.metric.Type() != pmetric.MetricTypeGauge {
		t.Errorf("hw.power: unit %q type %v, want W gauge", power.metric.Unit(), power.metric.Type())
	}
	if power.metric.Description() == "" {
		t.Error("hw.power has no description")
	}
	if power.dp.DoubleValue() != 300 {
		t.Errorf("hw.power of GPU 0 = %v, want 300", power.dp.DoubleValue())
	}
	if got := latest(t, sink, "hw.power", map[string]any{"gpu.index": int64(1)}).dp.DoubleValue(); got != 310 {
		t.Errorf("hw.power of GPU 1 = %v, want 310", got)
	}
	if n := power.dp.Attributes().Len(); n != 4 {
		t.Errorf("hw.power carries %d attributes, want 4: %v", n, power.dp.Attributes().AsRaw())
	}

	energy := latest(t, sink, "hw.energy", gpu0())
	if energy.metric.Unit() != "J" || energy.metric.Type() != pmetric.MetricTypeSum {
		t.Fatalf("hw.energy: unit %q type %v, want J sum", energy.metric.Unit(), energy.metric.Type())
	}
	if s := energy.metric.Sum(); !s.IsMonotonic() || s.AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Errorf("hw.energy: monotonic %v temporality %v, want a monotonic cumulative sum", s.IsMonotonic(), s.AggregationTemporality())
	}
	if energy.dp.DoubleValue() != 5000 {
		t.Errorf("hw.energy = %v, want 5000", energy.dp.DoubleValue())
	}
	if energy.dp.StartTimestamp() == 0 || energy.dp.StartTimestamp() > energy.dp.Timestamp() {
		t.Errorf("hw.energy start %v, time %v: a cumulative sum needs a start before its time", energy.dp.StartTimestamp(), energy.dp.Timestamp())
	}

	mem := latest(t, sink, "hw.gpu.memory.usage", gpu0())
	if mem.metric.Unit() != "By" || mem.metric.Type() != pmetric.MetricTypeSum || mem.metric.Sum().IsMonotonic() {
		t.Errorf("hw.gpu.memory.usage: unit %q type %v, want By non-monotonic sum", mem.metric.Unit(), mem.metric.Type())
	}
	if mem.dp.DoubleValue() != 40e9 {
		t.Errorf("hw.gpu.memory.usage = %v, want 4e10", mem.dp.DoubleValue())
	}

	temp := latest(t, sink, "hw.temperature", gpu0("hw.sensor_location", "memory"))
	if temp.metric.Unit() != "Cel" || temp.dp.DoubleValue() != 70 {
		t.Errorf("hw.temperature{memory}: unit %q value %v, want Cel 70", temp.metric.Unit(), temp.dp.DoubleValue())
	}
	limit := latest(t, sink, "capstan.gpu.power.limit", gpu0("capstan.limit.kind", "min"))
	if limit.dp.DoubleValue() != 200 {
		t.Errorf("capstan.gpu.power.limit{min} = %v, want 200", limit.dp.DoubleValue())
	}
	up := latest(t, sink, "capstan.collector.up", map[string]any{"collector": "gpu"})
	if up.metric.Type() != pmetric.MetricTypeGauge || up.dp.DoubleValue() != 1 {
		t.Errorf("capstan.collector.up: type %v value %v, want gauge 1", up.metric.Type(), up.dp.DoubleValue())
	}

	res := power.resource.AsRaw()
	for k, v := range map[string]any{
		"service.name": "capstan", "service.version": "1.2.3-test", "host.name": "node-a",
		"k8s.node.name": "k8s-node-a", "telemetry.sdk.language": "go",
	} {
		if res[k] != v {
			t.Errorf("resource %s = %v, want %v (resource %v)", k, res[k], v, res)
		}
	}
	if id, err := os.ReadFile("/etc/machine-id"); err == nil && strings.TrimSpace(string(id)) != "" {
		if res["host.id"] != strings.TrimSpace(string(id)) {
			t.Errorf("resource host.id = %v, want /etc/machine-id's %q", res["host.id"], strings.TrimSpace(string(id)))
		}
	}
}

// TestOTLPDeltaTemporality checks that with otlp.temporality=delta a counter arrives as delta
// sums whose values are the increments, also across a counter reset, and up-down counters stay
// cumulative.
func TestOTLPDeltaTemporality(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	sink := startReceiver(t, receiverOpts{protocol: "grpc", addr: addr})
	store := sample.NewStore()
	f := newFleet(1)
	store.Put("gpu", f.batch(1000))
	cfg := otlpConfig("grpc", addr)
	cfg.OTLP.Temporality = "delta"
	newExporters(t, Options{Config: cfg, Store: store})

	energySum := func() (sum float64, n int) {
		for _, p := range findPoints(sink, "hw.energy", gpu0()) {
			s := p.metric.Sum()
			if s.AggregationTemporality() != pmetric.AggregationTemporalityDelta || !s.IsMonotonic() {
				t.Fatalf("hw.energy: temporality %v monotonic %v, want monotonic delta", s.AggregationTemporality(), s.IsMonotonic())
			}
			sum += p.dp.DoubleValue()
			n++
		}
		return sum, n
	}
	// The first collection is a baseline: the counter's 1000 J were used before this exporter.
	testkit.WaitFor(t, "an export", func() bool { return len(findPoints(sink, "hw.gpu.memory.usage", gpu0())) > 0 })
	if sum, n := energySum(); n != 0 {
		t.Errorf("the first collection exported hw.energy deltas adding up to %v; want only a baseline", sum)
	}

	store.Put("gpu", f.batch(1250))
	testkit.WaitFor(t, "the 250 J increment", func() bool {
		for _, p := range findPoints(sink, "hw.energy", gpu0()) {
			if p.dp.DoubleValue() == 250 {
				return true
			}
		}
		return false
	})
	// Whatever the number of exports in between (their deltas are 0), the deltas add up to the
	// counter.
	if sum, _ := energySum(); sum != 250 {
		t.Errorf("hw.energy deltas add up to %v, want 250", sum)
	}

	// The driver reloaded and the counter restarted from 0: a reset, whose delta is the new
	// value, not a negative one.
	store.Put("gpu", f.batch(100))
	testkit.WaitFor(t, "the delta after the reset", func() bool {
		for _, p := range findPoints(sink, "hw.energy", gpu0()) {
			if p.dp.DoubleValue() == 100 {
				return true
			}
		}
		return false
	})
	for _, p := range findPoints(sink, "hw.energy", gpu0()) {
		if p.dp.DoubleValue() < 0 {
			t.Errorf("a negative hw.energy delta: %v", p.dp.DoubleValue())
		}
		if p.dp.StartTimestamp() == 0 || p.dp.StartTimestamp() > p.dp.Timestamp() {
			t.Errorf("hw.energy delta over [%v, %v]", p.dp.StartTimestamp(), p.dp.Timestamp())
		}
	}
	if sum, _ := energySum(); sum != 350 {
		t.Errorf("hw.energy deltas add up to %v, want 350 (250, then 100 after the reset)", sum)
	}
	mem := latest(t, sink, "hw.gpu.memory.usage", gpu0())
	if mem.metric.Sum().AggregationTemporality() != pmetric.AggregationTemporalityCumulative {
		t.Errorf("hw.gpu.memory.usage temporality %v, want cumulative (a delta of a level means nothing)", mem.metric.Sum().AggregationTemporality())
	}
}

// TestOTLPEndpointDownAtStart starts exporting to a port nothing listens on: New and Start
// succeed, failures are logged once, and data flows once a receiver comes up on that port
// (BenchmarkOTLPEndpointDown measures the heap meanwhile).
func TestOTLPEndpointDownAtStart(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	store := sample.NewStore()
	store.Put("gpu", newFleet(8).batch(5000))
	cfg := otlpConfig("grpc", addr)
	cfg.OTLP.Timeout = time.Second
	log, logs := testkit.NewLogger()
	e, err := New(context.Background(), Options{Config: cfg, Store: store, Logger: log})
	if err != nil {
		t.Fatalf("New with the endpoint down: %v", err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatalf("Start with the endpoint down: %v", err)
	}
	testkit.WaitFor(t, "three failed exports", func() bool { return logs.Count("OTLP export failed") >= 3 })
	if n := logs.Count(`level=WARN msg="OTLP export failed`); n != 1 {
		t.Errorf("%d warnings for a down endpoint, want exactly 1 (then debug):\n%s", n, logs)
	}

	sink := startReceiver(t, receiverOpts{protocol: "grpc", addr: addr})
	testkit.WaitFor(t, "metrics once the receiver is up", func() bool { return len(findPoints(sink, "hw.power", nil)) > 0 })
	testkit.WaitFor(t, "the recovery log line", func() bool { return logs.Count("OTLP export recovered") == 1 })
	if got := len(findPoints(sink, "hw.power", nil)); got < 8 {
		t.Errorf("%d hw.power points, want at least one per GPU (8)", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestOTLPHeadersFileAndTLS exports over mutual TLS to a receiver that requires a client
// certificate, with headers from the config and from a headers file, and checks the receiver saw
// the headers (file winning per key).
func TestOTLPHeadersFileAndTLS(t *testing.T) {
	pki := testpki.New(t)
	headersFile := filepath.Join(t.TempDir(), "otlp-headers")
	if err := os.WriteFile(headersFile, []byte(
		"# mounted from a Secret\n\nx-tenant = from-file\nauthorization: Bearer s3cr=t:42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ protocol, endpoint string }{
		{"grpc", "%s"},
		{"http", "https://%s"},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			addr := otlptest.FreeAddr(t)
			sink := startReceiver(t, receiverOpts{protocol: tc.protocol, addr: addr, tls: &pki})
			store := sample.NewStore()
			store.Put("gpu", newFleet(1).batch(5000))
			cfg := otlpConfig(tc.protocol, strings.Replace(tc.endpoint, "%s", addr, 1))
			cfg.OTLP.Insecure = false
			cfg.OTLP.Headers = map[string]string{"x-tenant": "inline", "x-team": "gpu-infra"}
			cfg.OTLP.HeadersFile = headersFile
			cfg.OTLP.TLS = config.TLS{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
			log, logs := testkit.NewLogger()
			newExporters(t, Options{Config: cfg, Store: store, Logger: log})
			testkit.WaitFor(t, "metrics over TLS", func() bool { return len(findPoints(sink, "hw.power", gpu0())) > 0 })
			if logs.Count("OTLP export failed") > 0 {
				t.Errorf("export failures logged:\n%s", logs)
			}
			ctxs := sink.Contexts()
			md := client.FromContext(ctxs[len(ctxs)-1]).Metadata
			for k, want := range map[string]string{
				"x-tenant":      "from-file",
				"x-team":        "gpu-infra",
				"authorization": "Bearer s3cr=t:42",
			} {
				if got := md.Get(k); len(got) != 1 || got[0] != want {
					t.Errorf("header %s at the receiver = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestOTLPBadTLSFiles checks that a file that is not PEM fails New with an error naming it.
func TestOTLPBadTLSFiles(t *testing.T) {
	pki := testpki.New(t)
	bad := filepath.Join(t.TempDir(), "not-a-pem.crt")
	if err := os.WriteFile(bad, []byte("this is not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tlsCfg := range map[string]config.TLS{
		"ca":   {CAFile: bad},
		"cert": {CAFile: pki.CAFile, CertFile: bad, KeyFile: pki.ClientKey},
		"key":  {CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: bad},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := otlpConfig("grpc", "127.0.0.1:4317")
			cfg.OTLP.Insecure = false
			cfg.OTLP.TLS = tlsCfg
			e, err := New(context.Background(), Options{Config: cfg, Store: sample.NewStore()})
			if err == nil {
				_ = e.Shutdown(context.Background())
				t.Fatal("New accepted a bad PEM file")
			}
			if !strings.Contains(err.Error(), bad) {
				t.Errorf("error %q does not name the bad file %s", err, bad)
			}
		})
	}
	t.Run("mismatched pair", func(t *testing.T) {
		cfg := otlpConfig("http", "https://127.0.0.1:4318")
		cfg.OTLP.TLS = config.TLS{CertFile: pki.ClientCert, KeyFile: pki.ServerKey}
		_, err := New(context.Background(), Options{Config: cfg, Store: sample.NewStore()})
		if err == nil || !strings.Contains(err.Error(), pki.ClientCert) {
			t.Errorf("mismatched certificate and key: error %v, want one naming %s", err, pki.ClientCert)
		}
	})
}

func TestOTLPConfigErrors(t *testing.T) {
	for name, mutate := range map[string]func(*config.OTLP){
		"protocol":     func(c *config.OTLP) { c.Protocol = "thrift" },
		"compression":  func(c *config.OTLP) { c.Compression = "zstd" },
		"temporality":  func(c *config.OTLP) { c.Temporality = "lowmemory" },
		"scheme":       func(c *config.OTLP) { c.Endpoint = "unix:///run/otel.sock" },
		"headers file": func(c *config.OTLP) { c.HeadersFile = "/nonexistent/capstan-headers" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := otlpConfig("grpc", "127.0.0.1:4317")
			mutate(&cfg.OTLP)
			if e, err := New(context.Background(), Options{Config: cfg, Store: sample.NewStore()}); err == nil {
				_ = e.Shutdown(context.Background())
				t.Fatalf("New accepted %+v", cfg.OTLP)
			}
		})
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		raw, protocol string
		insecure      bool
		want          endpoint
	}{
		{"collector:4317", "grpc", true, endpoint{hostport: "collector:4317", insecure: true}},
		{"collector:4317", "grpc", false, endpoint{hostport: "collector:4317"}},
		{"collector", "grpc", true, endpoint{hostport: "collector:4317", insecure: true}},
		{"collector", "http", false, endpoint{hostport: "collector:4318"}},
		{"[::1]", "http", false, endpoint{hostport: "[::1]:4318"}},
		{"http://collector:4318", "http", false, endpoint{hostport: "collector:4318", insecure: true}},
		{"http://collector:4318/", "http", false, endpoint{hostport: "collector:4318", insecure: true}},
		{"https://otel.example.com", "http", false, endpoint{hostport: "otel.example.com:443"}},
		{"https://otel.example.com/otlp/v1/metrics", "http", false, endpoint{hostport: "otel.example.com:443", path: "/otlp/v1/metrics"}},
		{"https://otel.example.com:4317", "grpc", true, endpoint{hostport: "otel.example.com:4317", schemeOverrides: true}},
		{"http://10.0.0.1:4317", "grpc", false, endpoint{hostport: "10.0.0.1:4317", insecure: true}},
	} {
		got, err := parseEndpoint(tc.raw, tc.protocol, tc.insecure)
		if err != nil || got != tc.want {
			t.Errorf("parseEndpoint(%q, %s, insecure=%v) = %+v, %v; want %+v", tc.raw, tc.protocol, tc.insecure, got, err, tc.want)
		}
	}
	for _, raw := range []string{"", "ftp://collector", "https://", "a b:1"} {
		if got, err := parseEndpoint(raw, "grpc", false); err == nil {
			t.Errorf("parseEndpoint(%q) = %+v, want an error", raw, got)
		}
	}
}

func TestReadHeadersFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("# comment\n  x-a=1\nx-b: two words\nx-c = a=b:c\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := mergeHeaders(map[string]string{"x-a": "inline", "x-d": "4"}, good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"x-a": "1", "x-b": "two words", "x-c": "a=b:c", "x-d": "4"}
	if len(h) != len(want) {
		t.Errorf("headers %v, want %v", h, want)
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("header %s = %q, want %q", k, h[k], v)
		}
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("x-a=1\nno separator here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readHeadersFile(bad); err == nil || !strings.Contains(err.Error(), bad+":2") {
		t.Errorf("bad line: error %v, want one naming %s:2", err, bad)
	}
}

// TestOTLPShutdownFlushes checks Shutdown makes one last export: with an interval far beyond the
// test, that export is the only one.
func TestOTLPShutdownFlushes(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	sink := startReceiver(t, receiverOpts{protocol: "http", addr: addr})
	store := sample.NewStore()
	store.Put("gpu", newFleet(1).batch(5000))
	cfg := otlpConfig("http", addr)
	cfg.OTLP.Interval = time.Hour
	e, err := New(context.Background(), Options{Config: cfg, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if len(findPoints(sink, "hw.power", nil)) != 0 {
		t.Fatal("data before any export")
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := latest(t, sink, "hw.energy", gpu0()).dp.DoubleValue(); got != 5000 {
		t.Errorf("hw.energy in the final export = %v, want 5000", got)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// TestOTLPShutdownReportsFailedFlush checks the last export's failure reaches the caller of
// Shutdown (periodic failures are only logged).
func TestOTLPShutdownReportsFailedFlush(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", newFleet(1).batch(5000))
	cfg := otlpConfig("http", otlptest.FreeAddr(t))
	cfg.OTLP.Interval = time.Hour
	cfg.OTLP.Timeout = time.Second
	e, err := New(context.Background(), Options{Config: cfg, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(context.Background()); err == nil || !strings.Contains(err.Error(), cfg.OTLP.Endpoint) {
		t.Errorf("Shutdown with the endpoint down: %v, want an error naming %s", err, cfg.OTLP.Endpoint)
	}
}
