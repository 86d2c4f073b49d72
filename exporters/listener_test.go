package exporters

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/sample"
)

// startKept starts exporters on 127.0.0.1:0 through k, as the agent does for each configuration.
func startKept(t *testing.T, k *Listeners, store *sample.Store) *Exporters {
	t.Helper()
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	e, err := New(context.Background(), Options{Config: cfg, Store: store, Version: "1.2.3-test", Listeners: k})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e
}

// A scrape that arrives while one configuration's web server has stopped and the next has not
// started is answered by the next one, on the same port, instead of being refused.
func TestScrapeDuringReloadIsAnswered(t *testing.T) {
	k := NewListeners()
	defer k.Close()
	store := sample.NewStore()
	first := startKept(t, k, store)
	addr := first.Addr().String()
	if code, _ := get(t, "http://"+addr+"/metrics", "", ""); code != http.StatusOK {
		t.Fatalf("first server: /metrics = %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// Between the two servers: the connection is queued, not refused.
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s between two configurations: %v", addr, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}

	second := startKept(t, k, store)
	shutdownAtEnd(t, second)
	if got := second.Addr().String(); got != addr {
		t.Errorf("the next server listens on %s, want the same %s", got, addr)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the scrape made between two configurations got no answer: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the scrape made between two configurations: status %d", resp.StatusCode)
	}
	if code, _ := get(t, "http://"+addr+"/metrics", "", ""); code != http.StatusOK {
		t.Errorf("second server: /metrics = %d", code)
	}
}

// A new listen address closes the kept socket and opens one there; Close frees the port.
func TestListenersMoveAndClose(t *testing.T) {
	k := NewListeners()
	l1, err := k.listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := l1.Addr().String()
	_ = l1.Close()
	l2, err := k.listen(context.Background(), "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this host: %v", err)
	}
	if l2.Addr().String() == old {
		t.Fatalf("a new address kept the old socket %s", old)
	}
	if c, err := net.DialTimeout("tcp", old, time.Second); err == nil {
		_ = c.Close()
		t.Errorf("the old address %s still accepts after the move", old)
	}
	k.Close()
	if c, err := net.DialTimeout("tcp", l2.Addr().String(), time.Second); err == nil {
		_ = c.Close()
		t.Errorf("%s still accepts after Close", l2.Addr())
	}
}
