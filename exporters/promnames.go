package exporters

import (
	"github.com/prometheus/otlptranslator"

	"github.com/capstan-power/capstan/internal/metrics"
)

// PrometheusName is the name a table metric has on the Prometheus endpoint: the translation the
// exposition uses, which is also what an OpenTelemetry Collector's Prometheus exporters apply
// by default. Dashboards and alerts are checked against it.
func PrometheusName(d *metrics.Def) (string, error) {
	namer := otlptranslator.NewMetricNamer("", translationStrategy)
	return namer.Build(otlptranslator.Metric{Name: d.Name, Unit: d.Unit, Type: namingType(d.Kind)})
}

// PrometheusLabel is the label name an attribute key has on the Prometheus endpoint.
func PrometheusLabel(key string) (string, error) {
	namer := otlptranslator.LabelNamer{UTF8Allowed: !translationStrategy.ShouldEscape()}
	return namer.Build(key)
}
