package exporters

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promconfig "github.com/prometheus/common/config"

	"github.com/capstan-power/capstan/internal/sample"
)

// dialAccepted opens a connection to addr that the server there has accepted, without sending a
// request on it: a connection dialed before a complete request on another one is accepted first
// (the accept queue is in order, and the server accepts one connection at a time).
func dialAccepted(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	other, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = other.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(other), nil)
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return conn
}

// readSome reports whether e's server has read bytes of a connection on which it has not read a
// whole request yet.
func readSome(e *Exporters) bool {
	e.conns.mu.Lock()
	defer e.conns.mu.Unlock()
	for c, s := range e.conns.state {
		if kc := detachable(c); s == http.StateNew && kc != nil {
			kc.mu.Lock()
			read := kc.read
			kc.mu.Unlock()
			if read {
				return true
			}
		}
	}
	return false
}

// stopping starts e's Shutdown, as a reload does, and returns once its server accepts no more
// (its listener is closed); the returned channel has Shutdown's error.
func stopping(t *testing.T, e *Exporters) <-chan error {
	t.Helper()
	kept, ok := e.listener.(*keptListener)
	if !ok {
		t.Fatalf("the server's listener is a %T, not the kept socket", e.listener)
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stopped <- e.Shutdown(ctx)
	}()
	select {
	case <-kept.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not close the listener")
	}
	return stopped
}

// A connection the server accepted before a reload, whose request arrives once the reload has
// begun, gets an answer: from that server if it read the request, else from the next one, to
// which the stopping server hands the connection as if still in the accept queue. (net/http's
// Shutdown drops a request it reads after it began, closing the connection: the scraper gets
// EOF on a fresh connection, which no HTTP client retries.)
func TestAcceptedConnectionServedThroughReload(t *testing.T) {
	k := NewListeners()
	defer k.Close()
	store := sample.NewStore()
	first := startKept(t, k, store)
	addr := first.Addr().String()
	conn := dialAccepted(t, addr)

	stopped := stopping(t, first)
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	second := startKept(t, k, store)
	shutdownAtEnd(t, second)
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a scrape on a connection accepted before the reload got no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a scrape on a connection accepted before the reload: status %d", resp.StatusCode)
	}
	if code, _ := get(t, "http://"+addr+"/metrics", "", ""); code != http.StatusOK {
		t.Errorf("second server: /metrics = %d", code)
	}
}

// A scrape in flight when a reload begins gets its whole answer, with Connection: close, and
// Shutdown waits for it.
func TestInFlightScrapeFinishesThroughReload(t *testing.T) {
	k := NewListeners()
	defer k.Close()
	first := startKept(t, k, sample.NewStore())
	conn := dialAccepted(t, first.Addr().String())
	// Half a request: the server is reading it when the reload begins.
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	// Once the server has read some of it (before, the connection would go to the next server).
	for !readSome(first) {
		time.Sleep(time.Millisecond)
	}
	stopped := stopping(t, first)
	if _, err := conn.Write([]byte("\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a scrape in flight during the reload got no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("a scrape in flight during the reload: status %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// A connection a client opened ahead of need (Go's transport keeps the spare connections it
// dials), with no request on it, neither holds a reload nor is closed: the stopping server
// hands it to the next one, which answers the request that comes on it later.
func TestSpareConnectionGoesToTheNextServer(t *testing.T) {
	k := NewListeners()
	defer k.Close()
	store := sample.NewStore()
	first := startKept(t, k, store)
	conn := dialAccepted(t, first.Addr().String())
	// Far shorter than the server's ReadHeaderTimeout, for which net/http's Shutdown would wait.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a connection that sends nothing: %v", err)
	}
	second := startKept(t, k, store)
	shutdownAtEnd(t, second)
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a scrape on a spare connection from before the reload got no answer: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a scrape on a spare connection from before the reload: status %d", resp.StatusCode)
	}
}

// Without the kept socket there is no next server: a stop closes a connection that sends nothing
// after newConnGrace instead of waiting for its ReadHeaderTimeout.
func TestSpareConnectionClosedWithoutKeptSocket(t *testing.T) {
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	e, err := New(context.Background(), Options{Config: cfg, Store: sample.NewStore(), Version: "1.2.3-test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn := dialAccepted(t, e.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a connection that sends nothing: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil {
		t.Errorf("the connection got %d bytes, want it closed", n)
	}
}

// Scrapers get an answer to every scrape through a series of reloads: Prometheus's own HTTP
// client (keep-alive connections, as its scraper makes them) and one-shot scrapers (a connection
// per scrape, as curl or a probe make them), several at a time.
func TestScrapersThroughReloads(t *testing.T) {
	k := NewListeners()
	defer k.Close()
	store := sample.NewStore()
	cur := startKept(t, k, store)
	url := "http://" + cur.Addr().String() + "/metrics"

	prom, err := promconfig.NewClientFromConfig(promconfig.DefaultHTTPClientConfig, "capstan-test")
	if err != nil {
		t.Fatal(err)
	}
	prom.Timeout = 20 * time.Second
	oneShot := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	clients := []*http.Client{prom, prom, oneShot, oneShot}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var scrapes atomic.Int64
	failures := make(chan error, 100)
	for _, c := range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, err := http.NewRequest(http.MethodGet, url, http.NoBody)
				if err != nil {
					failures <- err
					return
				}
				resp, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				scrapes.Add(1)
				if err != nil {
					select {
					case failures <- err:
					default:
					}
				}
			}
		})
	}
	const reloads = 30
	for range reloads {
		// Let some scrapes reach this server before it stops.
		for n := scrapes.Load(); scrapes.Load() < n+4; {
			time.Sleep(time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := cur.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		cur = startKept(t, k, store)
	}
	shutdownAtEnd(t, cur)
	close(stop)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("a scrape during %d reloads failed: %v", reloads, err)
	}
}
