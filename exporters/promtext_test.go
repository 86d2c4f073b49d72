package exporters

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"

	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// parseText parses an exposition as Prometheus does, failing the test on any error.
func parseText(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	return testkit.ParseExposition(t, string(text))
}

// promName is the Prometheus name of d, worked out here from the translator as the OTel
// Prometheus exporter named it.
func promName(t *testing.T, d *metrics.Def) string {
	t.Helper()
	n := otlptranslator.NewMetricNamer("", otlptranslator.UnderscoreEscapingWithSuffixes)
	var typ otlptranslator.MetricType = otlptranslator.MetricTypeGauge
	switch d.Kind {
	case metrics.Counter:
		typ = otlptranslator.MetricTypeMonotonicCounter
	case metrics.UpDownCounter:
		typ = otlptranslator.MetricTypeNonMonotonicCounter
	}
	name, err := n.Build(otlptranslator.Metric{Name: d.Name, Unit: d.Unit, Type: typ})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// TestPrometheusText renders a collection of every metric of the table and checks, family by
// family, what Prometheus's own parser makes of it: TYPE, HELP, labels and value of every
// series, and target_info.
func TestPrometheusText(t *testing.T) {
	store := sample.NewStore()
	b := newFleet(2).batch(5000)
	store.Put("gpu", b)
	scope := instrumentation.Scope{Name: ScopeName, Version: "test"}
	x, err := newPromExposition(store, scope, nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	mp := newMeterProvider(NewResource(testConfig(), "1.2.3-test"), x.reader)
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	text, _, err := x.render(context.Background(), nil, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	fams := parseText(t, text)

	// Names pinned here as dashboards and alerts use them; the rest follow the translator.
	for def, want := range map[*metrics.Def]string{
		metrics.HWPower:        "hw_power_watts",
		metrics.HWEnergy:       "hw_energy_joules_total",
		metrics.GPUUtilization: "hw_gpu_utilization_ratio",
		metrics.GPUMemoryUsage: "hw_gpu_memory_usage_bytes",
		metrics.GPUStatus:      "hw_status",
	} {
		if got := promName(t, def); got != want {
			t.Errorf("%s is exported as %s, want %s", def.Name, got, want)
		}
	}

	type want struct {
		labels map[string]string
		value  float64
	}
	wantByFamily := map[string][]want{}
	for _, pt := range b.Points {
		labels := map[string]string{}
		for _, kv := range pt.Series.Attrs.ToSlice() {
			labels[strings.ReplaceAll(string(kv.Key), ".", "_")] = kv.Value.String()
		}
		name := promName(t, pt.Series.Def)
		wantByFamily[name] = append(wantByFamily[name], want{labels, pt.Value})
	}
	for _, d := range metrics.Table {
		name := promName(t, d)
		f := fams[name]
		if f == nil {
			t.Errorf("no family %s (%s)", name, d.Name)
			continue
		}
		wantType := dto.MetricType_GAUGE
		if d.Kind == metrics.Counter {
			wantType = dto.MetricType_COUNTER
		}
		if f.GetType() != wantType {
			t.Errorf("%s: TYPE %v, want %v (%v)", name, f.GetType(), wantType, d.Kind)
		}
		if f.GetHelp() != d.Description {
			t.Errorf("%s: HELP %q, want the table's description %q", name, f.GetHelp(), d.Description)
		}
		wants := wantByFamily[name]
		if len(f.GetMetric()) != len(wants) {
			t.Errorf("%s: %d series, want %d", name, len(f.GetMetric()), len(wants))
			continue
		}
		for i, m := range f.GetMetric() {
			got := labels(m)
			if len(got) != len(wants[i].labels) {
				t.Errorf("%s series %d: labels %v, want %v", name, i, got, wants[i].labels)
			}
			for k, v := range wants[i].labels {
				if got[k] != v {
					t.Errorf("%s series %d: label %s=%q, want %q", name, i, k, got[k], v)
				}
			}
			value := m.GetGauge().GetValue()
			if wantType == dto.MetricType_COUNTER {
				value = m.GetCounter().GetValue()
			}
			if value != wants[i].value {
				t.Errorf("%s%v = %v, want %v", name, got, value, wants[i].value)
			}
		}
	}

	info := fams["target_info"]
	if info == nil || info.GetType() != dto.MetricType_GAUGE || len(info.GetMetric()) != 1 {
		t.Fatalf("target_info: %v, want one gauge series", info)
	}
	l := labels(info.GetMetric()[0])
	for k, v := range map[string]string{"service_name": "capstan", "service_version": "1.2.3-test", "host_name": "node-a", "telemetry_sdk_language": "go"} {
		if l[k] != v {
			t.Errorf("target_info %s = %q, want %q (%v)", k, l[k], v, l)
		}
	}
	if v := info.GetMetric()[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("target_info = %v, want 1", v)
	}
}

// TestPrometheusTextEscaping checks label values and special floats the text format must escape
// or spell out, and that units follow the table (no name is hard-coded).
func TestPrometheusTextEscaping(t *testing.T) {
	store := sample.NewStore()
	b := &sample.Batch{}
	b.Reset("agent", time.Unix(1_700_000_000, 0))
	odd := "a \"quoted\\\" name\nwith a newline and bad UTF-8 \xff"
	b.Add(sample.NewSeries(metrics.CollectorUp, attribute.String(metrics.AttrCollector, odd)), 1)
	b.Add(sample.NewSeries(metrics.CollectorDuration, attribute.String(metrics.AttrCollector, "nan")), math.NaN())
	b.Add(sample.NewSeries(metrics.CollectorDuration, attribute.String(metrics.AttrCollector, "inf")), math.Inf(1))
	b.Add(sample.NewSeries(metrics.CollectorDuration, attribute.String(metrics.AttrCollector, "tiny")), 1.5e-300)
	b.Add(sample.NewSeries(metrics.CollectorDuration, attribute.String(metrics.AttrCollector, "neg")), -0.25)
	store.Put("agent", b)
	e := startWeb(t, store, "")
	fams := scrape(t, e)

	up := fams[promName(t, metrics.CollectorUp)]
	if up == nil || len(up.GetMetric()) != 1 {
		t.Fatalf("%s: %v", promName(t, metrics.CollectorUp), up)
	}
	if got, want := labels(up.GetMetric()[0])["collector"], strings.ToValidUTF8(odd, "\uFFFD"); got != want {
		t.Errorf("escaped label value came back as %q, want %q", got, want)
	}
	dur := fams[promName(t, metrics.CollectorDuration)]
	got := map[string]float64{}
	for _, m := range dur.GetMetric() {
		got[labels(m)["collector"]] = m.GetGauge().GetValue()
	}
	if !math.IsNaN(got["nan"]) || !math.IsInf(got["inf"], 1) || got["tiny"] != 1.5e-300 || got["neg"] != -0.25 {
		t.Errorf("special values came back as %v", got)
	}
}

func gpu0Labels() map[string]string {
	return map[string]string{"hw_type": "gpu", "hw_id": gpuUUID(0), "gpu_index": "0"}
}

// TestPrometheusSeriesLeave checks that a series no longer in the store is gone from the next
// scrape, and a series that comes back is there again.
func TestPrometheusSeriesLeave(t *testing.T) {
	store := sample.NewStore()
	f := newFleet(2)
	store.Put("gpu", f.batch(5000))
	e := startWeb(t, store, "")
	if n := len(scrape(t, e)["hw_power_watts"].GetMetric()); n != 2 {
		t.Fatalf("%d hw_power_watts series, want 2", n)
	}
	// GPU 1 fell off the bus: the collector's next batch has GPU 0 only.
	one := &fleet{gpus: f.gpus[:1], collectorUp: f.collectorUp, collectorDuration: f.collectorDuration}
	store.Put("gpu", one.batch(6000))
	fams := scrape(t, e)
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			if labels(m)["hw_id"] == gpuUUID(1) {
				t.Errorf("%s still has GPU 1: %v", name, labels(m))
			}
		}
	}
	if got := series(t, fams, "hw_energy_joules_total", dto.MetricType_COUNTER, gpu0Labels()); got != 6000 {
		t.Errorf("hw_energy_joules_total of GPU 0 = %v, want 6000", got)
	}
	store.Put("gpu", f.batch(7000))
	if n := len(scrape(t, e)["hw_power_watts"].GetMetric()); n != 2 {
		t.Errorf("%d hw_power_watts series after GPU 1 came back, want 2", n)
	}
}

// TestPrometheusHTTP checks the response: content type, gzip when asked for, the name[] filter,
// and concurrent scrapes while the store changes.
func TestPrometheusHTTP(t *testing.T) {
	store := sample.NewStore()
	f := newFleet(2)
	store.Put("gpu", f.batch(5000))
	e := startWeb(t, store, "")
	url := "http://" + e.Addr().String() + "/metrics"

	fetch := func(url string, gz bool) (http.Header, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if gz {
			// Set by hand, the transport leaves the body compressed.
			req.Header.Set("Accept-Encoding", "gzip")
		} else {
			req.Header.Set("Accept-Encoding", "identity")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header, body
	}

	header, plain := fetch(url, false)
	if ct := header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if ce := header.Get("Content-Encoding"); ce != "" {
		t.Errorf("Content-Encoding %q without gzip accepted", ce)
	}
	parseText(t, plain)

	header, compressed := fetch(url, true)
	if ce := header.Get("Content-Encoding"); ce != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", ce)
	}
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatal(err)
	}
	unzipped, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if fams := parseText(t, unzipped); fams["hw_power_watts"] == nil || fams["go_goroutines"] == nil {
		t.Errorf("gzipped scrape lacks families: %d families", len(fams))
	}

	_, filtered := fetch(url+"?name[]=hw_power_watts&name[]=go_goroutines", false)
	fams := parseText(t, filtered)
	if len(fams) != 2 || fams["hw_power_watts"] == nil || fams["go_goroutines"] == nil {
		names := make([]string, 0, len(fams))
		for n := range fams {
			names = append(names, n)
		}
		t.Errorf("name[] filter: families %v, want hw_power_watts and go_goroutines", names)
	}

	// 20 scrapers at once for two seconds while the collector puts new batches: every request
	// is answered 200 with a whole exposition that parses and has both GPUs (the race detector
	// checks the sharing). Each request lets the writer put one more batch, so puts and scrapes
	// interleave.
	started := make(chan struct{}, concurrentScrapers)
	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-started:
				store.Put("gpu", f.batch(5000+float64(i)))
			}
		}
	})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrentScrapers}}
	defer client.CloseIdleConnections()
	timeUp := make(chan struct{})
	timer := time.AfterFunc(2*time.Second, func() { close(timeUp) })
	defer timer.Stop()
	var requests, served atomic.Int64
	var wg sync.WaitGroup
	for range concurrentScrapers {
		wg.Go(func() {
			for {
				select {
				case <-timeUp:
					return
				case started <- struct{}{}:
				default:
				}
				requests.Add(1)
				resp, err := client.Get(url)
				if err != nil {
					t.Errorf("GET /metrics: %v", err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Errorf("reading a concurrent scrape: %v", err)
					return
				}
				if resp.StatusCode != http.StatusOK {
					t.Errorf("GET /metrics: %d %s", resp.StatusCode, body)
					return
				}
				p := expfmt.NewTextParser(model.UTF8Validation)
				fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
				if err != nil {
					t.Errorf("parsing a concurrent scrape: %v", err)
					return
				}
				if n := len(fams["hw_power_watts"].GetMetric()); n != 2 {
					t.Errorf("concurrent scrape: %d hw_power_watts series, want 2", n)
				}
				// target_info is last: its presence says the exposition is whole.
				if fams[otlptranslator.TargetInfoMetricName] == nil {
					t.Errorf("concurrent scrape of %d bytes lacks target_info", len(body))
				}
				served.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	writer.Wait()
	if got, want := served.Load(), requests.Load(); got != want || got < concurrentScrapers {
		t.Errorf("%d of %d requests of %d concurrent scrapers served whole", got, want, concurrentScrapers)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"":                               false,
		"gzip":                           true,
		"deflate, gzip;q=0.5":            true,
		"gzip;q=0":                       false,
		"identity":                       false,
		"*":                              true,
		"br;q=1.0, gzip; q=0.8, *;q=0.1": true,
		"zstd":                           false,
	} {
		r, _ := http.NewRequest(http.MethodGet, "/metrics", nil)
		if header != "" {
			r.Header.Set("Accept-Encoding", header)
		}
		if got := acceptsGzip(r); got != want {
			t.Errorf("Accept-Encoding %q: gzip %v, want %v", header, got, want)
		}
	}
}

// TestPrometheusExpositionShared checks when /metrics renders anew: requests share one
// rendering while the store is unchanged and it is younger than exposeMaxAge; a Put, a Delete
// or age makes the next request render; name[] and gzip are cut and compressed from the shared
// rendering; requests arriving together share one render.
func TestPrometheusExpositionShared(t *testing.T) {
	store := sample.NewStore()
	f := newFleet(3)
	gpus := &fleet{gpus: f.gpus[:2], collectorUp: f.collectorUp, collectorDuration: f.collectorDuration, others: f.others}
	store.Put("gpu", gpus.batch(5000))
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	e := newExporters(t, Options{Config: cfg, Store: store, Version: "1.2.3-test"})
	clock := clock.NewManual(time.Unix(1_700_000_000, 0))
	e.prom.now = clock.Now

	serve := func(query string, gz bool) []byte {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/metrics"+query, nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET /metrics%s: %d %s", query, rec.Code, rec.Body)
		}
		if !gz {
			return rec.Body.Bytes()
		}
		zr, err := gzip.NewReader(rec.Body)
		if err != nil {
			t.Fatalf("GET /metrics%s: %v", query, err)
		}
		body, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("GET /metrics%s: %v", query, err)
		}
		return body
	}
	renders := func(want uint64, after string) {
		t.Helper()
		if got := e.prom.renders.Load(); got != want {
			t.Errorf("after %s: %d renders, want %d", after, got, want)
		}
	}
	gpuSeries := func(body []byte) int { return len(parseText(t, body)["hw_power_watts"].GetMetric()) }

	first := serve("", false)
	if again := serve("", false); !bytes.Equal(first, again) {
		t.Errorf("a second scrape of an unchanged store within %v differs from the first:\n%s\n---\n%s", exposeMaxAge, first, again)
	}
	if zipped := serve("", true); !bytes.Equal(zipped, first) {
		t.Errorf("the gzipped scrape is not the shared exposition:\n%s", zipped)
	}
	renders(1, "three scrapes of an unchanged store")

	_ = serve("?name[]=hw_power_watts&name[]=target_info", true)
	filtered := serve("?name[]=hw_power_watts&name[]=target_info", false)
	if fams := parseText(t, filtered); len(fams) != 2 || gpuSeries(filtered) != 2 || fams["target_info"] == nil {
		t.Errorf("name[] scrape: %d families:\n%s", len(fams), filtered)
	}
	renders(1, "name[] scrapes")

	clock.Advance(exposeMaxAge)
	if aged := serve("", false); bytes.Equal(aged, first) {
		t.Errorf("a scrape %v later is the first one again", exposeMaxAge)
	}
	renders(2, "a scrape after exposeMaxAge")

	extra := &sample.Batch{}
	extra.Reset("gpu2", time.Unix(1_700_000_000, 0))
	f.gpus[2].add(extra, 2, 9000)
	store.Put("gpu2", extra)
	if n := gpuSeries(serve("", false)); n != 3 {
		t.Errorf("after a Put: %d hw_power_watts series, want 3", n)
	}
	renders(3, "a scrape after a Put")
	store.Delete("gpu2")
	if n := gpuSeries(serve("", false)); n != 2 {
		t.Errorf("after a Delete: %d hw_power_watts series, want 2", n)
	}
	renders(4, "a scrape after a Delete")

	// Requests arriving together after a change: one render, the same bytes for all.
	store.Put("gpu", gpus.batch(6000))
	bodies := make([][]byte, concurrentScrapers)
	var wg sync.WaitGroup
	for i := range bodies {
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			rec := httptest.NewRecorder()
			e.handler.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Errorf("concurrent GET /metrics: %d", rec.Code)
			}
			bodies[i] = rec.Body.Bytes()
		})
	}
	wg.Wait()
	for i := range bodies {
		if !bytes.Equal(bodies[i], bodies[0]) {
			t.Errorf("concurrent scrape %d differs from scrape 0", i)
		}
	}
	renders(5, fmt.Sprintf("%d concurrent scrapes after a Put", concurrentScrapers))

	// An exposition a request still holds keeps its bytes while later ones reuse memory.
	held, err := e.prom.current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(held.text)
	for i := range 3 {
		store.Put("gpu", gpus.batch(7000+float64(i)))
		_ = serve("", i%2 == 0)
	}
	if !bytes.Equal(held.text, want) {
		t.Errorf("a held exposition changed while later ones were rendered:\n%s", held.text)
	}
	e.prom.release(held)
}
