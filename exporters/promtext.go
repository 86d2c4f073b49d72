package exporters

import (
	"bytes"
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
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
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
//
// Scrapers share renderings (see current): however many scrape at once, one render runs at a
// time, and every request is answered from finished bytes.
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

	// changed receives a signal after every Put to and Delete from the store, so a cached
	// exposition is known to be stale.
	changed chan struct{}
	// now is time.Now, or a test's clock.
	now func() time.Time

	// cacheMu guards latest (the exposition being rendered or the last one rendered), the
	// readers of every exposition, and spare.
	cacheMu sync.Mutex
	latest  *exposition
	// spare is the memory of an exposition no request holds any more, for the next to reuse.
	spare exposeMemory
	// renders counts renders started for /metrics requests.
	renders atomic.Uint64

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
	// prefixScratch is where a new series' prefix is written before it is kept at its exact size.
	prefixScratch []byte
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
func newPromExposition(store *sample.Store, scope instrumentation.Scope, enabled func(*metrics.Def) bool, log *slog.Logger) (*promExposition, error) {
	x := &promExposition{
		producer:   newStoreProducer[promSeries](store, scope, sdkmetric.DefaultTemporalitySelector).withMetricFilter(enabled),
		registry:   prometheus.NewRegistry(),
		log:        log,
		families:   make([]promFamily, len(metrics.Table)),
		tableNames: make(map[string]bool, len(metrics.Table)),
		changed:    make(chan struct{}, 1),
		now:        time.Now,
		labelNames: make(map[string]labelName),
		written:    make(map[string]bool),
		warned:     make(map[string]bool),
	}
	x.reader = sdkmetric.NewManualReader(sdkmetric.WithProducer(x.producer))
	store.Notify(x.changed)
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
	if err := x.registry.Register(newProcessCollector()); err != nil {
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

// exposeMaxAge is how long a rendered exposition is served while the store is unchanged: the
// agent's own metrics in it (Go, process, promhttp) are at most that old.
const exposeMaxAge = time.Second

// exposition is one rendering of /metrics, shared by every request that arrives while it is being
// rendered or while it is fresh. Nothing in it changes once done is closed.
type exposition struct {
	done chan struct{}
	// text is the whole exposition.
	text []byte
	// failed says the render panicked.
	failed bool
	// families are the spans of text the families take, in order, for name[] requests.
	families []familySpan
	// started is when the render began.
	started time.Time
	// readers counts the requests holding the exposition, its renderer included.
	readers int

	gzipOnce sync.Once
	gzipped  []byte
	gzipErr  error
}

// exposeMemory is what an exposition allocates.
type exposeMemory struct {
	text     []byte
	families []familySpan
	gzipped  []byte
}

// familySpan is where one family's lines are in an exposition's text.
type familySpan struct {
	name       string
	start, end int
}

// gzipText returns the gzipped text, compressed by the first request that asks for it.
func (c *exposition) gzipText() ([]byte, error) {
	c.gzipOnce.Do(func() {
		// gzipped holds, empty, the memory of an earlier exposition's, if there was one.
		buf := bytes.NewBuffer(c.gzipped[:0])
		buf.Grow(len(c.text) / 4)
		gz := gzipWriters.Get().(*gzip.Writer)
		defer gzipWriters.Put(gz)
		gz.Reset(buf)
		_, err := gz.Write(c.text)
		if cerr := gz.Close(); err == nil {
			err = cerr
		}
		gz.Reset(nil)
		c.gzipped, c.gzipErr = buf.Bytes(), err
	})
	return c.gzipped, c.gzipErr
}

// scrapeBuffers holds the text of name[] responses, so one reuses the memory of an earlier one.
var scrapeBuffers = sync.Pool{New: func() any { return new(textBuffer) }}

// gzipWriters are reused across scrapes. They compress statelessly: the standard library's
// writer holds over 1 MiB of hash tables (even at BestSpeed), which were most of the agent's
// heap, and a pool loses them at every GC; a stateless writer borrows about 300 KiB for the
// length of one Write. An exposition of a few hundred KiB compresses about as well.
var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.StatelessCompression)
	return w
}}

// ServeHTTP serves one scrape: text format 0.0.4, gzipped when the scraper accepts it. Every
// request is served, however many arrive at once: they share one rendering (see current), so
// the work is bounded, not the readers. `name[]` query parameters select families from that
// rendering, as with promhttp.
func (x *promExposition) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cur, err := x.current(r.Context())
	if err != nil {
		// The scraper gave up waiting; nobody reads the answer.
		http.Error(w, "waiting for /metrics: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer x.release(cur)
	if cur.failed {
		http.Error(w, "rendering /metrics failed", http.StatusInternalServerError)
		return
	}
	var names []string
	if r.URL != nil {
		names = r.URL.Query()["name[]"]
	}
	h := w.Header()
	h.Set("Content-Type", promContentType)
	h.Add("Vary", "Accept-Encoding")
	if len(names) > 0 {
		x.serveFamilies(w, r, cur, names)
		return
	}
	body := cur.text
	if acceptsGzip(r) {
		if gz, err := cur.gzipText(); err == nil {
			h.Set("Content-Encoding", "gzip")
			body = gz
		} else {
			x.errors.WithLabelValues("encoding").Inc()
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if _, err := w.Write(body); err != nil {
		x.errors.WithLabelValues("encoding").Inc()
	}
}

// serveFamilies serves the families of cur named in names, in the exposition's order.
func (x *promExposition) serveFamilies(w http.ResponseWriter, r *http.Request, cur *exposition, names []string) {
	buf := scrapeBuffers.Get().(*textBuffer)
	defer scrapeBuffers.Put(buf)
	buf.b = buf.b[:0]
	for _, f := range cur.families {
		if slices.Contains(names, f.name) {
			buf.b = append(buf.b, cur.text[f.start:f.end]...)
		}
	}
	if !acceptsGzip(r) {
		w.Header().Set("Content-Length", strconv.Itoa(len(buf.b)))
		if _, err := w.Write(buf.b); err != nil {
			x.errors.WithLabelValues("encoding").Inc()
		}
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	gz := gzipWriters.Get().(*gzip.Writer)
	defer gzipWriters.Put(gz)
	gz.Reset(w)
	_, err := gz.Write(buf.b)
	if cerr := gz.Close(); err == nil {
		err = cerr
	}
	gz.Reset(nil)
	if err != nil {
		x.errors.WithLabelValues("encoding").Inc()
	}
}

// current returns the exposition to serve: the one being rendered, or the last one while it is
// fresh, else a new one this request renders. So at most one render runs at a time, however
// many scrapers there are, and they all get its bytes. It waits for a render in progress until
// ctx is done. Unless it returns an error, the caller must release the exposition.
func (x *promExposition) current(ctx context.Context) (*exposition, error) {
	x.cacheMu.Lock()
	cur := x.latest
	if cur != nil && x.fresh(cur) {
		cur.readers++
		x.cacheMu.Unlock()
		select {
		case <-cur.done:
			return cur, nil
		case <-ctx.Done():
			x.release(cur)
			return nil, ctx.Err()
		}
	}
	// Drained before the collection, so a change after this point makes the new
	// exposition stale.
	select {
	case <-x.changed:
	default:
	}
	if cur != nil && cur.readers == 0 {
		x.recycle(cur)
	}
	cur = &exposition{done: make(chan struct{}), started: x.now(), readers: 1}
	x.latest = cur
	text, spans := x.spare.text, x.spare.families
	cur.gzipped = x.spare.gzipped
	x.spare = exposeMemory{}
	x.cacheMu.Unlock()
	x.renders.Add(1)

	rendered := false
	defer func() {
		if !rendered {
			// The render panicked: the requests waiting get a 500, the next one tries again.
			cur.failed = true
			x.cacheMu.Lock()
			if x.latest == cur {
				x.latest = nil
			}
			x.cacheMu.Unlock()
		}
		close(cur.done)
	}()
	// Not the request's context: the other requests waiting on this render still want it when
	// this scraper gives up.
	text, spans, err := x.render(context.WithoutCancel(ctx), text[:0], true, spans[:0])
	if err != nil {
		// Whatever could be rendered is served, as promhttp's ContinueOnError did: a broken
		// family must not take the node's GPU metrics with it.
		x.log.Warn("serving /metrics", "err", err)
	}
	cur.text, cur.families = text, spans
	rendered = true
	return cur, nil
}

// release says a request is done with cur; the last one out of an exposition that is no longer
// served hands its memory to the next render.
func (x *promExposition) release(cur *exposition) {
	x.cacheMu.Lock()
	defer x.cacheMu.Unlock()
	cur.readers--
	if cur.readers == 0 && x.latest != cur {
		x.recycle(cur)
	}
}

// recycle keeps the memory of cur, which no request holds or can take any more, for the next
// render. Called with cacheMu held.
func (x *promExposition) recycle(cur *exposition) {
	if cap(cur.text) > cap(x.spare.text) {
		x.spare.text, x.spare.families = cur.text, cur.families
	}
	if cap(cur.gzipped) > cap(x.spare.gzipped) {
		x.spare.gzipped = cur.gzipped
	}
	cur.text, cur.families, cur.gzipped = nil, nil, nil
}

// fresh reports whether cur may be served: it is being rendered, or it is younger than
// exposeMaxAge and the store has not changed since it began. Called with cacheMu held.
func (x *promExposition) fresh(cur *exposition) bool {
	select {
	case <-cur.done:
	default:
		return true
	}
	if x.now().Sub(cur.started) >= exposeMaxAge {
		return false
	}
	select {
	case <-x.changed: // a Put or a Delete
		return false
	default:
		return true
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
// order), the registry's families when withRegistry, and target_info. It appends to spans where
// each family's lines are. An error leaves out what failed and reports it; the rest is rendered.
func (x *promExposition) render(ctx context.Context, b []byte, withRegistry bool, spans []familySpan) ([]byte, []familySpan, error) {
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
			b, spans = x.appendStore(b, sm, spans)
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
		if b, spans, err = x.appendRegistry(b, spans); err != nil {
			errs = append(errs, err)
		}
	}
	if len(x.targetInfo) > 0 {
		start := len(b)
		b = append(b, x.targetInfo...)
		spans = append(spans, familySpan{name: otlptranslator.TargetInfoMetricName, start: start, end: len(b)})
	}
	if len(errs) > 0 {
		x.errors.WithLabelValues("gathering").Inc()
	}
	return b, spans, errors.Join(errs...)
}

// appendStore appends the families of the store producer's collection sm.
func (x *promExposition) appendStore(b []byte, sm *metricdata.ScopeMetrics, spans []familySpan) ([]byte, []familySpan) {
	p := x.producer
	for j := range sm.Metrics {
		m := &sm.Metrics[j]
		id, states := p.collected(j)
		fam := &x.families[id]
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
		start := len(b)
		b = append(b, fam.header...)
		for k := range pts {
			ps := &states[k].reader
			if ps.prefix == nil && !ps.bad {
				// Every series keeps its prefix for as long as it lives: written in the
				// scratch buffer and copied out, it holds no spare capacity from growing.
				prefix, err := x.appendSeriesPrefix(x.prefixScratch[:0], fam.name, pts[k].Attributes)
				x.prefixScratch = prefix
				if err != nil {
					ps.bad = true
					x.warnOnce(fam.name, "dropping a series from /metrics: its attributes have no Prometheus labels",
						"metric", fam.name, "err", err)
				} else {
					ps.prefix = bytes.Clone(prefix)
				}
			}
			if ps.bad {
				continue
			}
			b = append(b, ps.prefix...)
			b = appendFloat(b, pts[k].Value)
			b = append(b, '\n')
		}
		spans = append(spans, familySpan{name: fam.name, start: start, end: len(b)})
	}
	return b, spans
}

// appendRegistry appends the registry's families (Go, process, the handler's own), leaving out
// any whose name was already written.
func (x *promExposition) appendRegistry(b []byte, spans []familySpan) ([]byte, []familySpan, error) {
	mfs, err := x.registry.Gather()
	if err != nil {
		err = fmt.Errorf("gathering the agent's own metrics: %w", err)
	}
	sink := textBuffer{b: b}
	for _, mf := range mfs {
		name := mf.GetName()
		if len(mf.GetMetric()) == 0 {
			continue
		}
		if x.tableNames[name] || x.written[name] {
			x.warnOnce("clash "+name, "leaving a metric out of /metrics: another metric has its name", "name", name)
			continue
		}
		x.written[name] = true
		start := len(sink.b)
		if _, e := expfmt.MetricFamilyToText(&sink, mf); e != nil {
			err = errors.Join(err, fmt.Errorf("encoding %s: %w", name, e))
		}
		spans = append(spans, familySpan{name: name, start: start, end: len(sink.b)})
	}
	return sink.b, spans, err
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
