package exporters

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestSocketsOutliveServers(t *testing.T) {
	var s Sockets
	ctx := context.Background()
	first, err := s.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := first.Addr().String()
	// The first server stops (its view closes); the port stays open.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept on a closed view: %v", err)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing between two servers: %v", err)
	}
	defer c.Close()
	// The next server, on the same address, gets the connection that waited.
	next, err := s.Listen(ctx, "tcp", "127.0.0.1:0")
	if err == nil && next.Addr().String() != addr {
		// "127.0.0.1:0" is what both configurations say: the kept socket is reused.
		t.Errorf("a new socket %s for the same configured address, want %s", next.Addr(), addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan net.Conn, 1)
	go func() {
		conn, err := next.Accept()
		if err == nil {
			got <- conn
		}
	}()
	select {
	case conn := <-got:
		_ = conn.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the connection made between two servers was not handed to the next")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after Close: %v, want refused", err)
	}
}

func TestSocketsMoveWithTheAddress(t *testing.T) {
	var s Sockets
	defer s.Close()
	ctx := context.Background()
	a, err := s.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	old := a.Addr().String()
	_ = a.Close()
	b, err := s.Listen(ctx, "tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := net.DialTimeout("tcp", old, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the old address still listens after a reload moved it: %v", err)
	}
}
