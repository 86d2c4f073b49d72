// Package otlptest starts the OpenTelemetry Collector's own OTLP receiver inside a test, so
// that Capstan's OTLP export is checked against the real thing. Only tests import it.
package otlptest

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/config/configtls"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
)

// Options configures a receiver.
type Options struct {
	Protocol string // grpc or http
	// Addr is host:port to listen on; empty picks a free port on 127.0.0.1.
	Addr string
	// TLS, when set, makes the receiver serve TLS; with ClientCAFile it requires client certificates.
	TLS *ServerTLS
}

// ServerTLS names the receiver's PEM files.
type ServerTLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// FreeAddr returns a 127.0.0.1 address nothing listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start starts the receiver with request metadata passed on to the sink, and stops it when the
// test ends. It returns the address it listens on and the sink collecting what arrives.
func Start(t testing.TB, o Options) (string, *consumertest.MetricsSink) {
	t.Helper()
	if o.Addr == "" {
		o.Addr = FreeAddr(t)
	}
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig().(*otlpreceiver.Config)
	var serverTLS configoptional.Optional[configtls.ServerConfig]
	if o.TLS != nil {
		s := configtls.NewDefaultServerConfig()
		s.CertFile, s.KeyFile, s.ClientCAFile = o.TLS.CertFile, o.TLS.KeyFile, o.TLS.ClientCAFile
		serverTLS = configoptional.Some(s)
	}
	switch o.Protocol {
	case "grpc":
		g := cfg.Protocols.GRPC.GetOrInsertDefault()
		g.NetAddr.Endpoint = o.Addr
		g.IncludeMetadata = true
		g.TLS = serverTLS
		cfg.Protocols.HTTP = configoptional.None[otlpreceiver.HTTPConfig]()
	case "http":
		h := cfg.Protocols.HTTP.GetOrInsertDefault()
		h.ServerConfig.NetAddr.Endpoint = o.Addr
		h.ServerConfig.IncludeMetadata = true
		h.ServerConfig.TLS = serverTLS
		cfg.Protocols.GRPC = configoptional.None[configgrpc.ServerConfig]()
	default:
		t.Fatalf("unknown OTLP protocol %q", o.Protocol)
	}
	sink := new(consumertest.MetricsSink)
	r, err := f.CreateMetrics(context.Background(), receivertest.NewNopSettings(f.Type()), cfg, sink)
	if err != nil {
		t.Fatalf("creating the OTLP receiver: %v", err)
	}
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatalf("starting the OTLP receiver: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Shutdown(context.Background()); err != nil {
			t.Errorf("stopping the OTLP receiver: %v", err)
		}
	})
	return o.Addr, sink
}

// Point is one received number data point with its metric and resource.
type Point struct {
	Metric   pmetric.Metric
	DP       pmetric.NumberDataPoint
	Resource pcommon.Map
}

// Points returns every number data point the sink received, in arrival order.
func Points(sink *consumertest.MetricsSink) []Point {
	var out []Point
	for _, md := range sink.AllMetrics() {
		rms := md.ResourceMetrics()
		for i := 0; i < rms.Len(); i++ {
			rm := rms.At(i)
			sms := rm.ScopeMetrics()
			for j := 0; j < sms.Len(); j++ {
				ms := sms.At(j).Metrics()
				for k := 0; k < ms.Len(); k++ {
					m := ms.At(k)
					var dps pmetric.NumberDataPointSlice
					switch m.Type() {
					case pmetric.MetricTypeGauge:
						dps = m.Gauge().DataPoints()
					case pmetric.MetricTypeSum:
						dps = m.Sum().DataPoints()
					default:
						continue
					}
					for l := 0; l < dps.Len(); l++ {
						out = append(out, Point{Metric: m, DP: dps.At(l), Resource: rm.Resource().Attributes()})
					}
				}
			}
		}
	}
	return out
}
