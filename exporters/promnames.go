package exporters

import (
	"github.com/prometheus/otlptranslator"

	"github.com/capstan-power/capstan/internal/metrics"
)

// translationStrategy is how OTel names become Prometheus names: underscores for dots, unit and
// type suffixes (hw.power in W becomes hw_power_watts, a counter gets _total). It is also what
// Prometheus's own OTLP ingestion produces by default, so dashboards work whether the data came
// by scrape or by OTLP.
var translationStrategy = otlptranslator.UnderscoreEscapingWithSuffixes

// The namers of translationStrategy; they hold no state, so the exposition and the exported
// functions below share them.
var (
	metricNamer = otlptranslator.NewMetricNamer("", translationStrategy)
	labelNamer  = otlptranslator.LabelNamer{UTF8Allowed: !translationStrategy.ShouldEscape()}
)

// PrometheusName is the name a table metric has on the Prometheus endpoint: the translation the
// exposition uses, which is also what an OpenTelemetry Collector's Prometheus exporters apply
// by default. Dashboards and alerts are checked against it.
func PrometheusName(d *metrics.Def) (string, error) {
	return metricNamer.Build(otlptranslator.Metric{Name: d.Name, Unit: d.Unit, Type: namingType(d.Kind)})
}

// PrometheusLabel is the label name an attribute key has on the Prometheus endpoint.
func PrometheusLabel(key string) (string, error) {
	return labelNamer.Build(key)
}

// namingType is the otlptranslator type of a table metric, as the OTel Prometheus exporter
// derived it from the aggregation: a Counter is a monotonic sum, an UpDownCounter a
// non-monotonic one.
func namingType(k metrics.Kind) otlptranslator.MetricType {
	switch k {
	case metrics.Counter:
		return otlptranslator.MetricTypeMonotonicCounter
	case metrics.UpDownCounter:
		return otlptranslator.MetricTypeNonMonotonicCounter
	}
	return otlptranslator.MetricTypeGauge
}
