package exporters

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Listeners keeps the web server's socket open from one configuration to the next. A reload
// stops one web server and starts another; were the socket closed in between, a scrape at that
// moment would be refused. Kept open, it waits in the kernel's accept queue and the next server
// answers it. One Listeners lives as long as the agent; Close closes the socket at the end.
type Listeners struct {
	mu   sync.Mutex
	addr string // the configured address the socket was opened for
	tcp  *net.TCPListener
	// handed holds connections the kernel gave a server that was stopping: the next one serves them.
	handed chan net.Conn
}

// NewListeners returns an empty Listeners: the first listen opens the socket.
func NewListeners() *Listeners { return &Listeners{handed: make(chan net.Conn, 64)} }

// listen returns a listener on addr for one web server. It is the kept socket when addr is the
// address it was opened for; otherwise the kept socket is closed and a new one opened. Closing
// the returned listener ends that server's accepting, not the socket.
func (k *Listeners) listen(ctx context.Context, addr string) (net.Listener, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tcp != nil && k.addr != addr {
		k.closeLocked()
	}
	if k.tcp == nil {
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tcp, ok := l.(*net.TCPListener)
		if !ok {
			_ = l.Close()
			return nil, fmt.Errorf("listening on %s: not a TCP listener", addr)
		}
		k.tcp, k.addr = tcp, addr
	}
	// A stopped server's Close set a deadline on the socket to end its Accept: clear it.
	if err := k.tcp.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return &keptListener{k: k, tcp: k.tcp, closed: make(chan struct{})}, nil
}

// Close closes the kept socket; the agent calls it once, when it exits.
func (k *Listeners) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closeLocked()
}

func (k *Listeners) closeLocked() {
	if k.tcp != nil {
		_ = k.tcp.Close()
		k.tcp, k.addr = nil, ""
	}
	for {
		select {
		case c := <-k.handed:
			_ = c.Close()
		default:
			return
		}
	}
}

// keptListener is one web server's view of the kept socket.
type keptListener struct {
	k      *Listeners
	tcp    *net.TCPListener
	once   sync.Once
	closed chan struct{}
}

func (l *keptListener) Accept() (net.Conn, error) {
	for {
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		case c := <-l.k.handed:
			return &keptConn{Conn: c, k: l.k}, nil
		default:
		}
		c, err := l.tcp.Accept()
		select {
		case <-l.closed:
			if err == nil {
				l.k.handOn(c)
			}
			return nil, net.ErrClosed
		default:
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // the deadline of a server stopped before this one
		}
		if err != nil {
			return nil, err
		}
		return &keptConn{Conn: c, k: l.k}, nil
	}
}

// Close ends Accept (through a deadline in the past) and leaves the socket open.
func (l *keptListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		_ = l.tcp.SetDeadline(time.Now())
	})
	return nil
}

func (l *keptListener) Addr() net.Addr { return l.tcp.Addr() }
