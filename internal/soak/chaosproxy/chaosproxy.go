// Package chaosproxy puts a proxy the soak harness controls between a client and a real
// server: a TCP proxy that can blackhole a link (an agent partitioned from etcd), and an HTTP
// proxy that can go down, answer slowly or refuse with 503 (an OTLP receiver in trouble).
package chaosproxy

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// TCP forwards every connection to a target address until it is blackholed: then the bytes
// of every open and new connection are swallowed, as on a link that drops every packet; when
// the link comes back the swallowed connections are cut, as their TCP would time out.
type TCP struct {
	ln     net.Listener
	target string
	black  atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]bool // open client-side connections → swallowed (accepted while black)
	done  bool
}

// NewTCP listens on a free loopback port and forwards to target.
func NewTCP(target string) (*TCP, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", target, err)
	}
	p := &TCP{ln: ln, target: target, conns: map[net.Conn]bool{}}
	go p.accept()
	return p, nil
}

// Addr is the address clients dial.
func (p *TCP) Addr() string { return p.ln.Addr().String() }

// Blackhole drops (true) or restores (false) the link.
func (p *TCP) Blackhole(on bool) {
	if p.black.Swap(on) == on || on {
		return
	}
	// Back: the connections that lived through the partition are dead; cut them.
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Close stops the proxy and cuts every connection.
func (p *TCP) Close() {
	p.mu.Lock()
	p.done = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
}

func (p *TCP) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.conns[c] = true
		p.mu.Unlock()
		go p.serve(c)
	}
}

func (p *TCP) serve(c net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
	}()
	if p.black.Load() {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	defer func() { _ = up.Close() }()
	done := make(chan struct{}, 2)
	go func() { p.pump(up, c); done <- struct{}{} }()
	go func() { p.pump(c, up); done <- struct{}{} }()
	<-done
}

// pump copies src to dst while the link is up and swallows what src sends while it is down.
func (p *TCP) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.black.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// HTTPMode is what the HTTP proxy does with a request.
type HTTPMode int32

// The HTTP proxy's modes.
const (
	Pass   HTTPMode = iota // forward
	Down                   // not listening: connections are refused
	Slow                   // forward after a delay
	Refuse                 // answer 503 Service Unavailable
	numModes
)

func (m HTTPMode) String() string {
	return [...]string{"pass", "down", "slow", "refuse"}[m]
}

// HTTP is a reverse proxy in front of one HTTP server.
type HTTP struct {
	addr  string
	proxy *httputil.ReverseProxy
	delay atomic.Int64
	mode  atomic.Int32

	mu  sync.Mutex
	srv *http.Server
	// Served counts the requests forwarded.
	Served atomic.Int64
}

// NewHTTP listens on a free loopback port and forwards to the server at target (a URL).
func NewHTTP(target string) (*HTTP, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("proxy target %q: %w", target, err)
	}
	h := &HTTP{proxy: httputil.NewSingleHostReverseProxy(u)}
	// A client giving up on a slow request is the point of the exercise, not news.
	h.proxy.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", target, err)
	}
	h.addr = ln.Addr().String()
	h.serve(ln)
	return h, nil
}

// Addr is the address clients send to.
func (h *HTTP) Addr() string { return h.addr }

func (h *HTTP) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(h.handle), ReadHeaderTimeout: 10 * time.Second}
	h.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

func (h *HTTP) handle(w http.ResponseWriter, r *http.Request) {
	switch HTTPMode(h.mode.Load()) {
	case Refuse:
		http.Error(w, "unavailable (soak fault)", http.StatusServiceUnavailable)
		return
	case Slow:
		select {
		case <-time.After(time.Duration(h.delay.Load())):
		case <-r.Context().Done():
			return
		}
	}
	h.Served.Add(1)
	h.proxy.ServeHTTP(w, r)
}

// Set switches the mode; delay is Slow's delay per request.
func (h *HTTP) Set(m HTTPMode, delay time.Duration) error {
	if m < 0 || m >= numModes {
		return fmt.Errorf("unknown proxy mode %d", m)
	}
	h.delay.Store(int64(delay))
	h.mu.Lock()
	defer h.mu.Unlock()
	was := HTTPMode(h.mode.Swap(int32(m)))
	switch {
	case m == Down && was != Down:
		// Close cuts open connections too: the endpoint is gone, not just slow.
		return h.srv.Close()
	case m != Down && was == Down:
		ln, err := listenRetry(h.addr)
		if err != nil {
			h.mode.Store(int32(Down))
			return err
		}
		h.serve(ln)
	}
	return nil
}

// Close stops the proxy.
func (h *HTTP) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.srv.Close()
}

// listenRetry listens on addr again; the port was ours a moment ago, so a short retry covers a
// socket still closing.
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, errors.Join(fmt.Errorf("listening on %s again", addr), err)
}
