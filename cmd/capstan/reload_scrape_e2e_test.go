package main

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/otlptest"
)

// A reload stops one web server and starts the next; the port stays open in between, so a
// scrape that lands in the gap waits for the next server instead of being refused (the soak
// saw Prometheus' scrapes refused during SIGHUP storms).
func TestReloadKeepsScrapesAnswered(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=2", "--web.listen-address="+addr)
	a.waitLog(t, "agent ready")
	var refused, served atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + addr + "/metrics")
				if err != nil {
					if errors.Is(err, syscall.ECONNREFUSED) {
						refused.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				served.Add(1)
			}
		})
	}
	const reloads = 5
	for i := range reloads {
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		a.waitLogCount(t, "configuration reloaded", i+1)
	}
	close(stop)
	wg.Wait()
	if n := refused.Load(); n > 0 {
		t.Errorf("%d scrapes refused during %d reloads (%d served): %v", n, reloads, served.Load(), firstErr.Load())
	}
	if served.Load() == 0 {
		t.Error("no scrape served")
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d; logs:\n%s", code, a.Logs())
	}
}
