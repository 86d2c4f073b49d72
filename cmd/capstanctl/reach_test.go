package main

import (
	"bytes"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/testpki"
)

// TestUnreachableEtcd: a command that reaches no etcd names the endpoints it tried, why each did
// not answer, and the flag and variable that point it elsewhere; a refused dial does not wait
// for the request's deadline.
func TestUnreachableEtcd(t *testing.T) {
	hint := "point capstanctl at etcd with --etcd.endpoints or $CAPSTAN_ETCD_ENDPOINTS"

	t.Run("refused", func(t *testing.T) {
		ep := "http://" + etcdtest.FreeAddr(t) // nothing listens there
		other := "127.0.0.1:1"
		start := time.Now()
		out, err := run(t, ep+","+other, "status", "row-a")
		t.Logf("refused endpoints reported after %s (the request deadline is 10s)", time.Since(start).Round(time.Millisecond))
		for _, want := range []string{
			"no etcd endpoint answered (endpoints from --etcd.endpoints): ",
			ep + ": connection refused (nothing listens there); " + other + ": connection refused",
			hint,
		} {
			if err == nil || !strings.Contains(out, want) {
				t.Errorf("err %v, output:\n%s\nwant it to contain %q", err, out, want)
			}
		}
		if strings.Contains(out, "context deadline exceeded") {
			t.Errorf("a refused dial waited out the deadline:\n%s", out)
		}
	})

	t.Run("from the environment", func(t *testing.T) {
		ep := "http://" + etcdtest.FreeAddr(t)
		t.Setenv(endpointsEnv, ep)
		var out bytes.Buffer
		root := newRoot(&out, &out)
		root.SetArgs([]string{"budget", "get", "row-a"})
		want := "no etcd endpoint answered (endpoints from $CAPSTAN_ETCD_ENDPOINTS): " + ep + ": connection refused"
		if err := root.Execute(); err == nil || !strings.Contains(out.String(), want) {
			t.Errorf("err %v, output:\n%s\nwant it to contain %q", err, out.String(), want)
		}
		if !strings.Contains(root.PersistentFlags().Lookup("etcd.endpoints").Usage, "$CAPSTAN_ETCD_ENDPOINTS") {
			t.Error("--help does not name $CAPSTAN_ETCD_ENDPOINTS")
		}
	})

	t.Run("silent", func(t *testing.T) {
		// A listener that accepts and never answers: only the deadline ends the request, and the
		// error says what was seen.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conns := make(chan net.Conn, 64)
		defer func() {
			_ = l.Close()
			for c := range conns { // until the accepting goroutine has returned
				_ = c.Close()
			}
		}()
		go func() {
			defer close(conns)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns <- c
			}
		}()
		ep := "http://" + l.Addr().String()
		out, err := run(t, ep, "--timeout", "300ms", "status", "row-a")
		want := "no etcd endpoint answered within 300ms (endpoints from --etcd.endpoints): " + ep +
			": accepted a connection but gave no etcd answer"
		if err == nil || !strings.Contains(out, want) || !strings.Contains(out, hint) {
			t.Errorf("err %v, output:\n%s\nwant it to contain %q", err, out, want)
		}
	})

	_, eps := etcdtest.Start(t, 1, nil)
	t.Run("one of two answers", func(t *testing.T) {
		// A refused endpoint beside a live one is the client's to skip: no early refusal.
		out, err := run(t, "http://"+etcdtest.FreeAddr(t)+","+eps[0], "budget", "get", "row-a")
		if want := "group row-a has no budget"; err == nil || !strings.Contains(out, want) {
			t.Errorf("err %v, output:\n%s\nwant etcd's answer %q", err, out, want)
		}
	})

	t.Run("TLS to a plain server", func(t *testing.T) {
		ep := "https://" + eps[0]
		out, err := run(t, ep, "--timeout", "300ms", "status", "row-a")
		want := ep + ": TLS handshake failed: the server closed the connection (a plain server? use http://)"
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("err %v, output:\n%s\nwant it to contain %q", err, out, want)
		}
	})

	t.Run("TLS", func(t *testing.T) {
		p := testpki.New(t)
		_, hosts := etcdtest.Start(t, 1, func(c *embed.Config) {
			for _, u := range []*[]url.URL{&c.ListenClientUrls, &c.AdvertiseClientUrls} {
				(*u)[0].Scheme = "https"
			}
			c.ClientTLSInfo = transport.TLSInfo{CertFile: p.ServerCert, KeyFile: p.ServerKey, TrustedCAFile: p.CAFile, ClientCertAuth: true}
		})
		ep := "https://" + hosts[0]
		for _, c := range []struct {
			args []string
			want string
		}{
			{nil, ep + ": TLS handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority (give the CA that signed it with --etcd.tls.ca-file)"},
			{[]string{"--etcd.tls.ca-file", p.CAFile}, ep + ": TLS handshake failed: remote error: tls: certificate required (give a client certificate with --etcd.tls.cert-file and --etcd.tls.key-file)"},
		} {
			out, err := run(t, ep, append(c.args, "--timeout", "500ms", "status", "row-a")...)
			if err == nil || !strings.Contains(out, c.want) {
				t.Errorf("%v: err %v, output:\n%s\nwant it to contain %q", c.args, err, out, c.want)
			}
			if testing.Verbose() {
				t.Log(out)
			}
		}
	})
}
