package exporters

import (
	"fmt"
	"io"
	"time"

	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

const defaultStdoutInterval = 10 * time.Second

// newStdoutReader returns the stdout exporter (one JSON document per line and export, the SDK's
// metricdata encoding) on its own periodic reader and producer over store, for debugging without
// a collector.
func newStdoutReader(w io.Writer, c config.Stdout, store *sample.Store, scope instrumentation.Scope, enabled func(*metrics.Def) bool) (sdkmetric.Exporter, sdkmetric.Reader, error) {
	exp, err := stdoutmetric.New(stdoutmetric.WithWriter(w))
	if err != nil {
		return nil, nil, fmt.Errorf("creating the stdout exporter: %w", err)
	}
	interval := c.Interval
	if interval <= 0 {
		interval = defaultStdoutInterval
	}
	return exp, sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(interval),
		sdkmetric.WithProducer(newStoreProducer[struct{}](store, scope, exp.Temporality).withMetricFilter(enabled))), nil
}
