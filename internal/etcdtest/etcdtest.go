// Package etcdtest starts real etcd servers (go.etcd.io/etcd/server/v3/embed) inside a test
// process, so cluster tests run against etcd itself rather than a stand-in.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Start starts an embedded cluster of n members on loopback and returns them and their client
// addresses (host:port). Ticks are 10 ms, so one-second leases and fast elections work. edit, when
// not nil, changes each member's configuration before it starts (TLS, auth). The members stop when
// the test ends; Close stops one earlier.
//
// The members' addresses are picked before they start (each member must know its peers' URLs),
// so another process may bind one in between; a start that fails so is retried on new addresses.
func Start(t testing.TB, n int, edit func(*embed.Config)) ([]*embed.Etcd, []string) {
	t.Helper()
	var members []*embed.Etcd
	var cfgs []*embed.Config
	for attempt := 1; ; attempt++ {
		var err error
		members, cfgs, err = start(t, n, edit)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == startAttempts {
			t.Fatalf("%v (attempt %d of %d)", err, attempt, startAttempts)
		}
		t.Logf("%v: retrying on other addresses", err)
	}
	var eps []string
	for i, e := range members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(20 * time.Second):
			t.Fatalf("etcd member %s did not become ready in 20 s", cfgs[i].Name)
		}
		eps = append(eps, e.Clients[0].Addr().String())
	}
	return members, eps
}

// startAttempts bounds the starts on new addresses when another process took one.
const startAttempts = 5

// pickAddr picks a member's address; a test replaces it to take one away first.
var pickAddr = FreeAddr

// start starts the members once, on fresh addresses and directories; when one fails it stops
// those that started and returns the error.
func start(t testing.TB, n int, edit func(*embed.Config)) ([]*embed.Etcd, []*embed.Config, error) {
	t.Helper()
	var cfgs []*embed.Config
	var initial []string
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(t.TempDir(), cfg.Name)
		cfg.LogLevel = "fatal"
		cfg.TickMs, cfg.ElectionMs = 10, 100
		client, peer := loopbackURL(t), loopbackURL(t)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.InitialClusterToken = "capstan-test"
		initial = append(initial, cfg.Name+"="+peer.String())
		if edit != nil {
			edit(cfg)
		}
		cfgs = append(cfgs, cfg)
	}
	// The members of a cluster wait for each other, so they start concurrently.
	members := make([]*embed.Etcd, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			members[i], errs[i] = embed.StartEtcd(cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, e := range members {
				if e != nil {
					Close(e)
				}
			}
			return nil, nil, fmt.Errorf("starting etcd member %s: %w", cfgs[i].Name, err)
		}
	}
	for _, e := range members {
		t.Cleanup(func() { Close(e) })
	}
	return members, cfgs, nil
}

var closed sync.Map

// Close stops a member once; a test may stop one early and its cleanup then does nothing.
func Close(e *embed.Etcd) {
	if _, done := closed.LoadOrStore(e, true); !done {
		e.Close()
	}
}

// FreeAddr asks the kernel for an unused loopback address (host:port): a cluster's members must
// know their peers' URLs before they start.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func loopbackURL(t testing.TB) url.URL {
	return url.URL{Scheme: "http", Host: pickAddr(t)}
}
