package exporters

import (
	"fmt"
	"math"
	"strconv"

	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Metrics of scopes other than the store producer's: instruments registered on the
// MeterProvider (Exporters.MeterProvider), which the OTLP and stdout readers export through the
// SDK. /metrics shows them as the OTel Prometheus exporter did, by a general path that allocates;
// the store's metrics never take it.

// appendScope appends the families of a scope other than the store producer's.
func (x *promExposition) appendScope(b []byte, sm *metricdata.ScopeMetrics, filter map[string]bool) []byte {
	for j := range sm.Metrics {
		m := &sm.Metrics[j]
		if filter != nil {
			name, _, err := x.otherName(m)
			if err != nil || !filter[name] {
				continue
			}
		}
		b = x.appendMetric(b, m)
	}
	return b
}

// appendMetric appends one metric by the general path, which allocates: gauges and cumulative
// sums of either number type, and explicit-bucket histograms. Other aggregations, delta data and
// names that clash with a family already written are left out (and logged once).
func (x *promExposition) appendMetric(b []byte, m *metricdata.Metrics) []byte {
	name, typ, err := x.otherName(m)
	if err != nil {
		x.warnOnce("name "+m.Name, "leaving a metric out of /metrics: no Prometheus name", "metric", m.Name, "err", err)
		return b
	}
	if typ == "" {
		x.warnOnce("type "+m.Name, "leaving a metric out of /metrics: Prometheus text has no type for its aggregation",
			"metric", m.Name, "aggregation", fmt.Sprintf("%T", m.Data))
		return b
	}
	if x.tableNames[name] || x.written[name] {
		x.warnOnce("clash "+name, "leaving a metric out of /metrics: another metric has its Prometheus name",
			"metric", m.Name, "name", name)
		return b
	}
	x.written[name] = true
	b = appendHeader(b, name, m.Description, typ)
	switch data := m.Data.(type) {
	case metricdata.Gauge[float64]:
		b = appendNumberPoints(x, b, name, data.DataPoints)
	case metricdata.Gauge[int64]:
		b = appendNumberPoints(x, b, name, data.DataPoints)
	case metricdata.Sum[float64]:
		b = appendNumberPoints(x, b, name, data.DataPoints)
	case metricdata.Sum[int64]:
		b = appendNumberPoints(x, b, name, data.DataPoints)
	case metricdata.Histogram[float64]:
		b = appendHistogramPoints(x, b, name, data.DataPoints)
	case metricdata.Histogram[int64]:
		b = appendHistogramPoints(x, b, name, data.DataPoints)
	}
	return b
}

// otherName returns the Prometheus name and TYPE of a metric from another scope ("" when the
// text format cannot carry it), as the OTel Prometheus exporter named them.
func (x *promExposition) otherName(m *metricdata.Metrics) (name, typ string, err error) {
	tm := otlptranslator.Metric{Name: m.Name, Unit: m.Unit, Type: otlptranslator.MetricTypeUnknown}
	switch data := m.Data.(type) {
	case metricdata.Gauge[float64], metricdata.Gauge[int64]:
		tm.Type, typ = otlptranslator.MetricTypeGauge, "gauge"
	case metricdata.Sum[float64]:
		tm.Type, typ = sumType(data.IsMonotonic, data.Temporality)
	case metricdata.Sum[int64]:
		tm.Type, typ = sumType(data.IsMonotonic, data.Temporality)
	case metricdata.Histogram[float64]:
		tm.Type = otlptranslator.MetricTypeHistogram
		if data.Temporality == metricdata.CumulativeTemporality {
			typ = "histogram"
		}
	case metricdata.Histogram[int64]:
		tm.Type = otlptranslator.MetricTypeHistogram
		if data.Temporality == metricdata.CumulativeTemporality {
			typ = "histogram"
		}
	}
	if n, ok := x.otherNames[tm]; ok {
		return n, typ, nil
	}
	name, err = metricNamer.Build(tm)
	if err != nil {
		return "", "", err
	}
	x.otherNames[tm] = name
	return name, typ, nil
}

func sumType(monotonic bool, t metricdata.Temporality) (otlptranslator.MetricType, string) {
	switch {
	case t != metricdata.CumulativeTemporality:
		return otlptranslator.MetricTypeNonMonotonicCounter, ""
	case monotonic:
		return otlptranslator.MetricTypeMonotonicCounter, "counter"
	}
	return otlptranslator.MetricTypeNonMonotonicCounter, "gauge"
}

func appendNumberPoints[N int64 | float64](x *promExposition, b []byte, name string, pts []metricdata.DataPoint[N]) []byte {
	for i := range pts {
		line, err := x.appendSeriesPrefix(b, name, pts[i].Attributes)
		if err != nil {
			x.warnOnce(name, "dropping a series from /metrics: its attributes have no Prometheus labels", "metric", name, "err", err)
			continue
		}
		b = appendFloat(line, float64(pts[i].Value))
		b = append(b, '\n')
	}
	return b
}

func appendHistogramPoints[N int64 | float64](x *promExposition, b []byte, name string, pts []metricdata.HistogramDataPoint[N]) []byte {
	for i := range pts {
		dp := &pts[i]
		labels, err := x.appendLabels(nil, dp.Attributes, "le")
		if err != nil {
			x.warnOnce(name, "dropping a series from /metrics: its attributes have no Prometheus labels", "metric", name, "err", err)
			continue
		}
		var cumulative uint64
		for j, bound := range dp.Bounds {
			if j < len(dp.BucketCounts) {
				cumulative += dp.BucketCounts[j]
			}
			b = appendBucket(b, name, labels, bound, cumulative)
		}
		b = appendBucket(b, name, labels, math.Inf(1), dp.Count)
		b = appendSample(b, name, "_sum", labels, float64(dp.Sum))
		b = appendSample(b, name, "_count", labels, float64(dp.Count))
	}
	return b
}

func appendBucket(b []byte, name string, labels []byte, le float64, count uint64) []byte {
	b = append(b, name...)
	b = append(b, "_bucket{"...)
	if len(labels) > 0 {
		b = append(b, labels...)
		b = append(b, ',')
	}
	b = append(b, `le="`...)
	b = appendFloat(b, le)
	b = append(b, `"} `...)
	b = strconv.AppendUint(b, count, 10)
	return append(b, '\n')
}

func appendSample(b []byte, name, suffix string, labels []byte, v float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 {
		b = append(b, '{')
		b = append(b, labels...)
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendFloat(b, v)
	return append(b, '\n')
}
