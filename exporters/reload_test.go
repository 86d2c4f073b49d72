package exporters

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

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
// begun, is answered by that server: it neither hangs up nor leaves the scraper without an
// answer. (net/http's Shutdown drops a request read after it began, closing the connection:
// the scraper gets EOF on a fresh connection, which no HTTP client retries.)
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
	if !resp.Close {
		t.Error("the last response of a stopping server does not say Connection: close")
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}

	// The next configuration's server answers on the same socket.
	second := startKept(t, k, store)
	shutdownAtEnd(t, second)
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
