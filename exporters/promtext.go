package exporters

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// promContentType is the Prometheus text exposition format, version 0.0.4, which every
// Prometheus (and every agent that scrapes Prometheus endpoints) accepts.
const promContentType = "text/plain; version=0.0.4; charset=utf-8"

// targetInfoHelp is target_info's HELP, as the OTel Prometheus exporter wrote it.
const targetInfoHelp = "Target metadata"

// promExposition serves /metrics: a ManualReader with its own (cumulative) storeProducer whose
// collections it renders as Prometheus text, followed by the Go and process collectors'
// families and target_info (the resource).
//
// The text of the store's metrics is written directly: families in metrics.Table order, HELP
// from the table's description, names translated once per metric, and each series'
// `name{labels} ` prefix rendered once and kept (a promSeries, which the producer carries with
// its state of the series), so a scrape appends bytes and formats floats. Scope labels
// (otel_scope_*) are not written: Capstan has one scope, so they would be the same on every
// series, and otel_scope_version would change every series' identity on each upgrade.
//
// Metrics from other scopes (instruments someone registers on the MeterProvider) take a slower,
// general path (promscope.go).
type promExposition struct {
	reader   *sdkmetric.ManualReader
	producer *storeProducer[promSeries]
	// registry holds the Go and process collectors and the handler's own metrics.
	registry *prometheus.Registry
	errors   *prometheus.CounterVec
	log      *slog.Logger

	// families is indexed by metrics.Def.ID.
	families []promFamily
	// tableNames holds the families' names, which no other family may take.
	tableNames map[string]bool

	// sem bounds concurrent scrapes.
	sem chan struct{}

	// mu serialises collections (the producer's output is reused; see storeProducer) and
	// guards everything below.
	mu sync.Mutex
	rm metricdata.ResourceMetrics
	// targetInfo is the rendered target_info family; the resource does not change.
	targetInfo []byte
	labelNames map[string]labelName
	// written holds the names of the families written in the current scrape other than the
	// table's.
	written map[string]bool
	// warned holds what was already logged, so a broken metric is logged once, not per scrape.
	warned map[string]bool
}

// promSeries is what the exposition keeps per series of the store: its rendered
// `name{labels} ` prefix, or bad when its attributes have no Prometheus labels.
type promSeries struct {
	prefix []byte
	bad    bool
}

// promFamily is one metrics.Table entry in Prometheus terms.
type promFamily struct {
	name string
	// header is "# HELP …\n# TYPE …\n".
	header []byte
}

type labelName struct {
	name string
	err  error
}

// newPromExposition builds the reader, its producer and the registry of the agent's own metrics.
func newPromExposition(store *sample.Store, scope instrumentation.Scope, log *slog.Logger) (*promExposition, error) {
	x := &promExposition{
		producer:   newStoreProducer[promSeries](store, scope, sdkmetric.DefaultTemporalitySelector),
		registry:   prometheus.NewRegistry(),
		log:        log,
		families:   make([]promFamily, len(metrics.Table)),
		tableNames: make(map[string]bool, len(metrics.Table)),
		sem:        make(chan struct{}, maxScrapesInFlight),
		labelNames: make(map[string]labelName),
		written:    make(map[string]bool),
		warned:     make(map[string]bool),
	}
	x.reader = sdkmetric.NewManualReader(sdkmetric.WithProducer(x.producer))
	for i, d := range metrics.Table {
		name, err := PrometheusName(d)
		if err != nil {
			return nil, fmt.Errorf("translating %s to a Prometheus name: %w", d.Name, err)
		}
		if x.tableNames[name] {
			return nil, fmt.Errorf("translating %s to a Prometheus name: %s is taken by another metric", d.Name, name)
		}
		x.tableNames[name] = true
		typ := "gauge"
		if d.Kind == metrics.Counter {
			typ = "counter"
		}
		x.families[i] = promFamily{name: name, header: appendHeader(nil, name, d.Description, typ)}
	}

	// The Go and process collectors: process_resident_memory_bytes, go_goroutines, what an SRE
	// checks first about the agent itself.
	if err := x.registry.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("registering the Go collector: %w", err)
	}
	if err := x.registry.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("registering the process collector: %w", err)
	}
	// The counter promhttp keeps, under the same name.
	x.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "promhttp_metric_handler_errors_total",
		Help: "Total number of internal errors encountered by the promhttp metric handler.",
	}, []string{"cause"})
	x.errors.WithLabelValues("gathering")
	x.errors.WithLabelValues("encoding")
	if err := x.registry.Register(x.errors); err != nil {
		return nil, fmt.Errorf("registering the scrape error counter: %w", err)
	}
	return x, nil
}

// scrapeBuffers holds the rendered text of scrapes, so a scrape reuses the memory of an earlier
// one.
var scrapeBuffers = sync.Pool{New: func() any { return new(textBuffer) }}

// gzipWriters are reused across scrapes; BestSpeed, as promhttp.
var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
}}

// ServeHTTP serves one scrape: text format 0.0.4, gzipped when the scraper accepts it, at most
// maxScrapesInFlight at a time. `name[]` query parameters select families, as with promhttp.
func (x *promExposition) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case x.sem <- struct{}{}:
		defer func() { <-x.sem }()
	default:
		http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", maxScrapesInFlight),
			http.StatusServiceUnavailable)
		return
	}
	var filter map[string]bool
	if r.URL != nil {
		if names := r.URL.Query()["name[]"]; len(names) > 0 {
			filter = make(map[string]bool, len(names))
			for _, n := range names {
				filter[n] = true
			}
		}
	}
	buf := scrapeBuffers.Get().(*textBuffer)
	defer scrapeBuffers.Put(buf)
	var err error
	buf.b, err = x.render(r.Context(), buf.b[:0], filter, true)
	if err != nil {
		// Whatever could be rendered is served, as promhttp's ContinueOnError did: a broken
		// family must not take the node's GPU metrics with it.
		x.log.Warn("serving /metrics", "err", err)
	}

	h := w.Header()
	h.Set("Content-Type", promContentType)
	h.Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r) {
		h.Set("Content-Length", strconv.Itoa(len(buf.b)))
		if _, err := w.Write(buf.b); err != nil {
			x.errors.WithLabelValues("encoding").Inc()
		}
		return
	}
	h.Set("Content-Encoding", "gzip")
	gz := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(gz)
	gz.Reset(w)
	_, err = gz.Write(buf.b)
	if cerr := gz.Close(); err == nil {
		err = cerr
	}
	gz.Reset(nil)
	if err != nil {
		x.errors.WithLabelValues("encoding").Inc()
	}
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip (or anything) with a
// non-zero quality.
func acceptsGzip(r *http.Request) bool {
	for _, field := range r.Header.Values("Accept-Encoding") {
		for spec := range strings.SplitSeq(field, ",") {
			coding, params, _ := strings.Cut(spec, ";")
			coding = strings.TrimSpace(coding)
			if coding != "gzip" && coding != "*" {
				continue
			}
			q := 1.0
			for p := range strings.SplitSeq(params, ";") {
				if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.TrimSpace(k) == "q" {
					if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
						q = f
					}
				}
			}
			if q > 0 {
				return true
			}
		}
	}
	return false
}

// render appends one exposition to b: the collection's families (the store's, in table
// order), the registry's families when withRegistry, and target_info. filter, when
// not nil, selects families by name. An error leaves out what failed and reports it; the rest
// is rendered.
func (x *promExposition) render(ctx context.Context, b []byte, filter map[string]bool, withRegistry bool) ([]byte, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	clear(x.written)
	var errs []error
	if err := x.reader.Collect(ctx, &x.rm); err != nil {
		errs = append(errs, fmt.Errorf("collecting: %w", err))
	}
	for i := range x.rm.ScopeMetrics {
		sm := &x.rm.ScopeMetrics[i]
		// The provider holds no instruments but the store's producer, so no other scope has
		// anything to show.
		if x.producer.owns(sm) {
			b = x.appendStore(b, sm, filter)
		}
	}
	if x.targetInfo == nil && x.rm.Resource != nil {
		x.targetInfo = x.renderTargetInfo(x.rm.Resource.Set())
	}
	// The collection holds the producer's reused slices: drop them before the next Collect
	// could hand them to the SDK's own (reusing) produce step.
	clear(x.rm.ScopeMetrics[:cap(x.rm.ScopeMetrics)])
	x.rm.ScopeMetrics = x.rm.ScopeMetrics[:0]

	if withRegistry {
		var err error
		if b, err = x.appendRegistry(b, filter); err != nil {
			errs = append(errs, err)
		}
	}
	if len(x.targetInfo) > 0 && (filter == nil || filter[otlptranslator.TargetInfoMetricName]) {
		b = append(b, x.targetInfo...)
	}
	if len(errs) > 0 {
		x.errors.WithLabelValues("gathering").Inc()
	}
	return b, errors.Join(errs...)
}

// appendStore appends the families of the store producer's collection sm.
func (x *promExposition) appendStore(b []byte, sm *metricdata.ScopeMetrics, filter map[string]bool) []byte {
	p := x.producer
	for j := range sm.Metrics {
		m := &sm.Metrics[j]
		id, states := p.collected(j)
		fam := &x.families[id]
		if filter != nil && !filter[fam.name] {
			continue
		}
		var pts []metricdata.DataPoint[float64]
		switch data := m.Data.(type) {
		case metricdata.Gauge[float64]:
			pts = data.DataPoints
		case metricdata.Sum[float64]:
			pts = data.DataPoints
		}
		if len(pts) != len(states) {
			// Not what the producer made; cannot happen while render holds the lock.
			x.warnOnce("mismatch "+fam.name, "leaving a metric out of /metrics: its points do not match the producer's series",
				"metric", fam.name)
			continue
		}
		b = append(b, fam.header...)
		for k := range pts {
			ps := &states[k].reader
			if ps.prefix == nil && !ps.bad {
				prefix, err := x.appendSeriesPrefix(nil, fam.name, pts[k].Attributes)
				if err != nil {
					ps.bad = true
					x.warnOnce(fam.name, "dropping a series from /metrics: its attributes have no Prometheus labels",
						"metric", fam.name, "err", err)
				}
				ps.prefix = prefix
			}
			if ps.bad {
				continue
			}
			b = append(b, ps.prefix...)
			b = appendFloat(b, pts[k].Value)
			b = append(b, '\n')
		}
	}
	return b
}

// appendRegistry appends the registry's families (Go, process, the handler's own), leaving out
// any whose name was already written.
func (x *promExposition) appendRegistry(b []byte, filter map[string]bool) ([]byte, error) {
	mfs, err := x.registry.Gather()
	if err != nil {
		err = fmt.Errorf("gathering the agent's own metrics: %w", err)
	}
	sink := textBuffer{b: b}
	for _, mf := range mfs {
		name := mf.GetName()
		if len(mf.GetMetric()) == 0 || (filter != nil && !filter[name]) {
			continue
		}
		if x.tableNames[name] || x.written[name] {
			x.warnOnce("clash "+name, "leaving a metric out of /metrics: another metric has its name", "name", name)
			continue
		}
		x.written[name] = true
		if _, e := expfmt.MetricFamilyToText(&sink, mf); e != nil {
			err = errors.Join(err, fmt.Errorf("encoding %s: %w", name, e))
		}
	}
	return sink.b, err
}

// renderTargetInfo renders target_info: value 1, the resource attributes as labels.
func (x *promExposition) renderTargetInfo(res *attribute.Set) []byte {
	name := otlptranslator.TargetInfoMetricName
	b := appendHeader(nil, name, targetInfoHelp, "gauge")
	line, err := x.appendSeriesPrefix(b, name, *res)
	if err != nil {
		x.log.Warn("leaving target_info out of /metrics: the resource attributes have no Prometheus labels", "err", err)
		return []byte{}
	}
	return append(line, "1\n"...)
}

// appendSeriesPrefix appends `name{labels} ` (or `name ` without labels). On error b is returned
// unchanged.
func (x *promExposition) appendSeriesPrefix(b []byte, name string, attrs attribute.Set) ([]byte, error) {
	out := append(b, name...)
	if attrs.Len() > 0 {
		out = append(out, '{')
		var err error
		if out, err = x.appendLabels(out, attrs, ""); err != nil {
			return b, err
		}
		out = append(out, '}')
	}
	return append(out, ' '), nil
}

// appendLabels appends attrs as `k="v",…` (no braces), with label names translated as the OTel
// Prometheus exporter did: attributes whose names translate alike are merged, their values
// sorted and joined with ';'. reserved, when not empty, is a label name an attribute may not take.
func (x *promExposition) appendLabels(b []byte, attrs attribute.Set, reserved string) ([]byte, error) {
	type label struct {
		name   string
		values []string
	}
	labels := make([]label, 0, attrs.Len())
	for iter := attrs.Iter(); iter.Next(); {
		kv := iter.Attribute()
		name, err := x.labelName(string(kv.Key))
		if err != nil {
			return b, err
		}
		if name == reserved {
			return b, fmt.Errorf("attribute %s takes the reserved label %s", kv.Key, reserved)
		}
		v := kv.Value.String()
		if i := slices.IndexFunc(labels, func(l label) bool { return l.name == name }); i >= 0 {
			labels[i].values = append(labels[i].values, v)
			continue
		}
		labels = append(labels, label{name: name, values: []string{v}})
	}
	for i, l := range labels {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, l.name...)
		b = append(b, `="`...)
		if len(l.values) > 1 {
			slices.Sort(l.values)
		}
		for j, v := range l.values {
			if j > 0 {
				b = append(b, ';')
			}
			b = appendEscaped(b, v, true)
		}
		b = append(b, '"')
	}
	return b, nil
}

// labelName translates an attribute key to a label name, once per key.
func (x *promExposition) labelName(key string) (string, error) {
	if l, ok := x.labelNames[key]; ok {
		return l.name, l.err
	}
	name, err := labelNamer.Build(key)
	if err == nil && strings.HasPrefix(name, "__") {
		err = fmt.Errorf("attribute %s translates to the reserved label name %s", key, name)
	}
	x.labelNames[key] = labelName{name: name, err: err}
	return name, err
}

func (x *promExposition) warnOnce(key, msg string, args ...any) {
	if x.warned[key] {
		return
	}
	x.warned[key] = true
	x.log.Warn(msg, args...)
}

// appendHeader appends a family's HELP and TYPE lines.
func appendHeader(b []byte, name, help, typ string) []byte {
	b = append(b, "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = appendEscaped(b, help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	return append(b, '\n')
}

// appendEscaped appends s escaped as the text format wants: backslash and newline always,
// double quotes in label values. Invalid UTF-8 becomes U+FFFD, which the parser accepts.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat formats v as expfmt does.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case v == 0:
		return append(b, '0')
	case v == 1:
		return append(b, '1')
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// textBuffer is a byte slice that expfmt can write to without a bufio.Writer of its own.
type textBuffer struct{ b []byte }

func (t *textBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	return len(p), nil
}

func (t *textBuffer) WriteString(s string) (int, error) {
	t.b = append(t.b, s...)
	return len(s), nil
}

func (t *textBuffer) WriteByte(c byte) error {
	t.b = append(t.b, c)
	return nil
}

func (t *textBuffer) WriteRune(r rune) (int, error) {
	n := len(t.b)
	t.b = utf8.AppendRune(t.b, r)
	return len(t.b) - n, nil
}
