package exporters

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// keptConn is a connection a web server accepted from the kept socket. Until a byte of it is
// read it is no different from one still in the accept queue, so a stopping server hands it to
// the next one (detach) rather than closing it: a scraper that dialed just before a reload, or a
// client that keeps a spare connection it dialed ahead of need, is then answered by the next
// server, never hung up on.
type keptConn struct {
	net.Conn
	k *Listeners

	mu        sync.Mutex
	read      bool      // a byte was read: the connection is this server's
	detaching bool      // detach set a past read deadline to end the server's first read
	detached  bool      // that read ended without a byte: Close hands the connection on
	closed    bool      // Close was called
	deadline  time.Time // the read deadline the server last set
}

func (c *keptConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > 0 {
		c.read = true
		if c.detaching {
			// The request came before the deadline: the server serves it, with its deadline.
			c.detaching = false
			_ = c.Conn.SetReadDeadline(c.deadline)
		}
		return n, err
	}
	if c.detaching && errors.Is(err, os.ErrDeadlineExceeded) {
		c.detached = true
	}
	return n, err
}

func (c *keptConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.detaching || c.detached {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *keptConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.detaching || c.detached {
		return c.SetWriteDeadline(t) // the connection's own: keptConn keeps the read deadline
	}
	return c.Conn.SetDeadline(t)
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *keptConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// detach ends the server's wait for the first byte when none has been read: the server's read
// fails as on a timeout, the server closes the connection, and Close hands it to the next
// server. It does nothing to a connection of which a byte was read.
func (c *keptConn) detach() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.read || c.detaching || c.detached || c.closed {
		return
	}
	c.detaching = true
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
}

// Close closes the connection, or hands it to the next server when detach took it from this one.
func (c *keptConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	handOn := c.detached && !c.read
	c.mu.Unlock()
	if !handOn || c.Conn.SetDeadline(time.Time{}) != nil {
		return c.Conn.Close()
	}
	c.k.handOn(c.Conn)
	return nil
}

// handOn keeps c for the next server; were too many waiting already, it is closed.
func (k *Listeners) handOn(c net.Conn) {
	select {
	case k.handed <- c:
	default:
		_ = c.Close()
	}
}

// detachable returns the keptConn under c (through a TLS layer's NetConn), or nil.
func detachable(c net.Conn) *keptConn {
	for c != nil {
		if kc, ok := c.(*keptConn); ok {
			return kc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}
