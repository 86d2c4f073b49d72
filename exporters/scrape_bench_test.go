package exporters

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/sample"
)

// concurrentScrapers is how many scrapers hit /metrics at once in the concurrency benchmark and
// test: several Prometheus replicas, an agent and someone's curl loop.
const concurrentScrapers = 20

// BenchmarkConcurrentScrapes measures /metrics latency with 20 scrapers requesting at once over
// kept-alive connections, gzip accepted as Prometheus asks, while the store gets a new 8-GPU
// batch every 100 ms. It reports the median and the 99th percentile of the request latency and
// the share of requests not answered 200.
func BenchmarkConcurrentScrapes(b *testing.B) {
	store := sample.NewStore()
	f := newFleet(8)
	store.Put("gpu", f.batch(5000))
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	e, err := New(context.Background(), Options{Config: cfg, Store: store, Version: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	url := "http://" + e.Addr().String() + "/metrics"

	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				store.Put("gpu", f.batch(5000+float64(i)))
			}
		}
	})
	defer func() {
		close(stop)
		writer.Wait()
	}()

	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: concurrentScrapers,
		// The body is read as it comes, compressed: the scraper's inflating is not the agent's cost.
		DisableCompression: true,
	}}
	defer client.CloseIdleConnections()
	scrapeOnce := func() (int, error) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, err
	}

	latencies := make([]time.Duration, b.N)
	var next, failed atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for range concurrentScrapers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(latencies) {
					return
				}
				start := time.Now()
				code, err := scrapeOnce()
				latencies[i] = time.Since(start)
				if err != nil {
					b.Error(err)
					return
				}
				if code != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(latencies)
	at := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
	b.ReportMetric(100*float64(failed.Load())/float64(b.N), "non-200-%")
}
