package exporters

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// A reload stops one web server and starts the next on the same socket (Listeners). The old
// server must answer every request on the connections it accepted: net/http's Server.Shutdown
// does not. Shutdown drops a request that it reads after it began (the connection closes with no
// response), and a connection accepted before a reload whose request arrives, or is read, a
// moment later is such a request. The scraper gets EOF on a fresh connection, which no HTTP
// client retries. So the server is stopped in two steps:
//
//  1. Keep-alives off (from then on every response says Connection: close and its connection
//     closes after it; connections idle at that moment are closed), the listener closed (new
//     connections wait in the accept queue for the next server), and then a wait until no
//     connection is reading or answering a request: each request already accepted is served.
//     A connection of the kept socket of which nothing was read yet goes to the next server,
//     as if still in the accept queue (keptConn); any other without a request yet gets
//     newConnGrace for it, then is closed.
//  2. Shutdown, which then finds only idle connections (HTTP/2 ones, which it ends with GOAWAY)
//     and nothing in flight.
//
// What remains is inherent to HTTP keep-alive: a client that sends a request on an idle
// connection at the instant the server closes it (step 1) sees the connection closed. The
// client did reuse that connection, so Go's transport, and with it Prometheus's scraper, sends
// an idempotent GET again on a new connection, which the next server answers (RFC 9112 §9.3.1).

// webConns follows a web server's connections through http.Server.ConnState, so that a stop can
// wait until none is reading or answering a request.
type webConns struct {
	mu    sync.Mutex
	state map[net.Conn]http.ConnState
	busy  int           // connections new (request not read yet) or active
	quiet chan struct{} // closed when busy falls to 0; nil while nobody waits
}

func newWebConns() *webConns { return &webConns{state: make(map[net.Conn]http.ConnState)} }

// busyState reports whether a connection in s may still carry a request to answer.
func busyState(s http.ConnState) bool { return s == http.StateNew || s == http.StateActive }

// track is the server's ConnState hook.
func (w *webConns) track(c net.Conn, s http.ConnState) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.state[c]; ok && busyState(old) {
		w.busy--
	}
	if s == http.StateClosed || s == http.StateHijacked {
		delete(w.state, c)
	} else {
		w.state[c] = s
		if busyState(s) {
			w.busy++
		}
	}
	if w.busy == 0 && w.quiet != nil {
		close(w.quiet)
		w.quiet = nil
	}
}

// quieted returns a channel closed once no connection is new or active.
func (w *webConns) quieted() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.quiet == nil {
		w.quiet = make(chan struct{})
		if w.busy == 0 {
			close(w.quiet)
			ch := w.quiet
			w.quiet = nil
			return ch
		}
	}
	return w.quiet
}

// newConnGrace is how long a server that is not on the kept socket (so has no next server to
// hand its connections to) waits, when it stops, for the request of a connection accepted
// without one yet. The scraper that dialed it has most likely sent it already (it arrives within
// a round trip, and the server reads it as soon as its goroutine runs); a connection still
// without a request after that is one a client opened ahead of need (Go's transport keeps the
// spare connections it dials), and would otherwise hold the stop until ReadHeaderTimeout.
var newConnGrace = 250 * time.Millisecond

// detachNew hands the connections of the kept socket of which nothing was read yet to the next
// server (keptConn.detach).
func (w *webConns) detachNew() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c, s := range w.state {
		if kc := detachable(c); s == http.StateNew && kc != nil {
			kc.detach()
		}
	}
}

// closeNew closes the connections on which no request has been read and that no next server
// can take (not from the kept socket).
func (w *webConns) closeNew() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c, s := range w.state {
		if s == http.StateNew && detachable(c) == nil {
			_ = c.Close()
		}
	}
}

// drainServer stops srv, which serves l through conns' hook until served is closed, answering
// every request it has accepted (see above). It gives up when ctx is done: then it closes the
// connections left and returns ctx's error.
func drainServer(ctx context.Context, srv *http.Server, l net.Listener, conns *webConns, served <-chan struct{}) error {
	srv.SetKeepAlivesEnabled(false)
	_ = l.Close()
	grace := time.NewTimer(newConnGrace)
	defer grace.Stop()
	select {
	case <-served:
		conns.detachNew()
	wait:
		for {
			select {
			case <-conns.quieted():
				break wait
			case <-grace.C:
				conns.closeNew()
			case <-ctx.Done():
				break wait
			}
		}
	case <-ctx.Done():
	}
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
		return err
	}
	return nil
}
