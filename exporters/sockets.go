package exporters

import (
	"context"
	"errors"
	"net"
	"sync"
)

// Sockets keeps the web server's listening socket across the agent's reloads: a reload stops
// one web server and starts the next, and without it the port is closed in between, so a
// scrape (or a load balancer's health check) that lands in that gap is refused. Each server
// gets a view of the socket whose Close ends that server's Accept and leaves the socket open;
// connections that arrive between two servers wait in the kernel's backlog for the next one.
// Close closes the socket itself, when the agent stops.
type Sockets struct {
	mu   sync.Mutex
	kept *keptSocket
}

type keptSocket struct {
	l    net.Listener
	addr string // as configured, which is what a reload compares
	// conns carries accepted connections to whichever view serves now.
	conns chan net.Conn
	// stop asks the accept loop to end; done is closed when it has (the socket was closed).
	stop chan struct{}
	done chan struct{}
	err  error
}

// close closes the socket and waits for its accept loop.
func (k *keptSocket) close() error {
	close(k.stop)
	err := k.l.Close()
	<-k.done
	return err
}

// Listen returns a view of the kept socket when it listens on addr, or listens on addr anew
// (closing a kept socket on another address). Its signature is Options.Listen's.
func (s *Sockets) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kept != nil && s.kept.addr != addr {
		_ = s.kept.close()
		s.kept = nil
	}
	if s.kept != nil {
		select {
		case <-s.kept.done: // the socket failed since: listen again
			s.kept = nil
		default:
		}
	}
	if s.kept == nil {
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		k := &keptSocket{l: l, addr: addr, conns: make(chan net.Conn), stop: make(chan struct{}), done: make(chan struct{})}
		go k.accept()
		s.kept = k
	}
	return &socketView{k: s.kept, closed: make(chan struct{})}, nil
}

// Close closes the kept socket.
func (s *Sockets) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kept == nil {
		return nil
	}
	err := s.kept.close()
	s.kept = nil
	return err
}

func (k *keptSocket) accept() {
	defer close(k.done)
	for {
		c, err := k.l.Accept()
		if err != nil {
			k.err = err
			return
		}
		select {
		case k.conns <- c:
		case <-k.stop:
			_ = c.Close()
			return
		}
	}
}

// socketView is one server's listener on a kept socket.
type socketView struct {
	k      *keptSocket
	once   sync.Once
	closed chan struct{}
}

func (v *socketView) Accept() (net.Conn, error) {
	select {
	case c := <-v.k.conns:
		return c, nil
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.k.done:
		if v.k.err != nil {
			return nil, v.k.err
		}
		return nil, errors.New("listening socket closed")
	}
}

// Close ends this view's Accept; the socket stays open for the next server.
func (v *socketView) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *socketView) Addr() net.Addr { return v.k.l.Addr() }
