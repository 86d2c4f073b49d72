package chaosproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a line and reads it back; false when nothing comes back within wait.
func roundTrip(t *testing.T, c net.Conn, wait time.Duration) bool {
	t.Helper()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ping\n"
}

func TestTCPBlackhole(t *testing.T) {
	p, err := NewTCP(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !roundTrip(t, c, 5*time.Second) {
		t.Fatal("no echo through the proxy")
	}
	p.Blackhole(true)
	if roundTrip(t, c, 300*time.Millisecond) {
		t.Fatal("an open connection passed bytes through the blackhole")
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if roundTrip(t, c2, 300*time.Millisecond) {
		t.Fatal("a new connection passed bytes through the blackhole")
	}
	p.Blackhole(false)
	// The connections that lived through the partition are cut; a new one works.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection from before the partition still open")
	}
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if !roundTrip(t, c3, 5*time.Second) {
		t.Error("no echo after the link came back")
	}
}

func TestHTTPModes(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer backend.Close()
	p, err := NewHTTP(backend.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	status := func() int {
		resp, err := client.Get("http://" + p.Addr() + "/v1/metrics")
		if err != nil {
			return -1
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if s := status(); s != 200 {
		t.Fatalf("pass: %d", s)
	}
	if err := p.Set(Refuse, 0); err != nil {
		t.Fatal(err)
	}
	if s := status(); s != http.StatusServiceUnavailable {
		t.Errorf("refuse: %d, want 503", s)
	}
	if err := p.Set(Down, 0); err != nil {
		t.Fatal(err)
	}
	if s := status(); s != -1 {
		t.Errorf("down: status %d, want a refused connection", s)
	}
	if err := p.Set(Slow, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if s := status(); s != 200 {
		t.Errorf("slow: %d", s)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("slow answered after %v, before its delay", d)
	}
	if err := p.Set(Pass, 0); err != nil {
		t.Fatal(err)
	}
	if s := status(); s != 200 || p.Served.Load() != 3 {
		t.Errorf("pass again: %d, %d served", s, p.Served.Load())
	}
}
