package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// endpointsEnv is where --etcd.endpoints takes its default from, so that a shell can point
// every capstanctl command at one cluster.
const endpointsEnv = "CAPSTAN_ETCD_ENDPOINTS"

// defaultEndpoints is etcd's own default client URL.
const defaultEndpoints = "http://127.0.0.1:2379"

// endpointsDefault is --etcd.endpoints' default: the environment's value if set.
func endpointsDefault() string {
	if v := strings.TrimSpace(os.Getenv(endpointsEnv)); v != "" {
		return v
	}
	return defaultEndpoints
}

// endpointsOrigin says where the endpoints in force came from, for an error that must say how to
// change them.
func endpointsOrigin(endpoints string) string {
	switch {
	case strings.TrimSpace(os.Getenv(endpointsEnv)) != "" && endpoints == strings.TrimSpace(os.Getenv(endpointsEnv)):
		return "from $" + endpointsEnv
	case endpoints == defaultEndpoints:
		return "from the default"
	}
	return "from --etcd.endpoints"
}

// unreachableError says that no endpoint answered, why each did not, and how to point capstanctl
// elsewhere. It wraps the request's error, if any, so callers can still match it.
type unreachableError struct {
	endpoints string        // as given
	tried     []probeResult // one per endpoint
	waited    time.Duration // how long the request waited; 0: refused before any request
	err       error
}

func (e *unreachableError) Error() string {
	var b strings.Builder
	b.WriteString("no etcd endpoint answered")
	if e.waited > 0 {
		fmt.Fprintf(&b, " within %s", e.waited)
	}
	fmt.Fprintf(&b, " (endpoints %s): ", endpointsOrigin(e.endpoints))
	reasons := make([]string, len(e.tried))
	for i, r := range e.tried {
		reasons[i] = r.endpoint + ": " + r.reason()
	}
	b.WriteString(strings.Join(reasons, "; "))
	if e.err != nil && !errors.Is(e.err, context.DeadlineExceeded) {
		fmt.Fprintf(&b, " (the request: %v)", e.err)
	}
	fmt.Fprintf(&b, "\npoint capstanctl at etcd with --etcd.endpoints or $%s (comma-separated URLs, e.g. https://etcd-0:2379,https://etcd-1:2379)", endpointsEnv)
	return b.String()
}

func (e *unreachableError) Unwrap() error { return e.err }

// probeResult is what dialling one endpoint gave: err nil means it accepted a connection (and a
// TLS handshake where it is TLS).
type probeResult struct {
	endpoint string
	err      error
}

// definite reports whether the endpoint certainly cannot answer: the address refused or does
// not exist. Only then may capstanctl give up before the request's deadline.
func (r probeResult) definite() bool {
	var dns *net.DNSError
	return errors.Is(r.err, syscall.ECONNREFUSED) || errors.Is(r.err, syscall.ENETUNREACH) ||
		errors.Is(r.err, syscall.EHOSTUNREACH) || errors.Is(r.err, syscall.ENOENT) ||
		(errors.As(r.err, &dns) && dns.IsNotFound)
}

func (r probeResult) reason() string {
	var dns *net.DNSError
	var rec tls.RecordHeaderError
	var ne net.Error
	var hs *handshakeError
	var unknownCA x509.UnknownAuthorityError
	switch {
	case r.err == nil:
		if _, _, isTLS := dialTarget(r.endpoint); isTLS {
			return "accepted a TLS connection but gave no etcd answer (is it etcd's client port?)"
		}
		return "accepted a connection but gave no etcd answer (a TLS server reached with http://? use https:// and --etcd.tls.ca-file)"
	case errors.Is(r.err, syscall.ECONNREFUSED):
		return "connection refused (nothing listens there)"
	case errors.As(r.err, &dns) && dns.IsNotFound:
		return "no such host"
	case errors.As(r.err, &rec):
		return "TLS handshake failed: the server does not speak TLS (use http://)"
	case errors.As(r.err, &hs) && errors.Is(r.err, io.EOF):
		return "TLS handshake failed: the server closed the connection (a plain server? use http://)"
	case errors.As(r.err, &hs) && (errors.Is(r.err, context.DeadlineExceeded) || errors.As(r.err, &ne) && ne.Timeout()):
		return "accepted a connection but did not complete a TLS handshake"
	case errors.As(r.err, &hs) && errors.As(r.err, &unknownCA):
		return r.err.Error() + " (give the CA that signed it with --etcd.tls.ca-file)"
	case errors.As(r.err, &hs) && strings.Contains(r.err.Error(), "certificate required"):
		return r.err.Error() + " (give a client certificate with --etcd.tls.cert-file and --etcd.tls.key-file)"
	case errors.As(r.err, &hs):
		return r.err.Error()
	case errors.Is(r.err, context.DeadlineExceeded), errors.As(r.err, &ne) && ne.Timeout():
		return "no answer (connection timed out: a firewall or a host that is down?)"
	}
	return r.err.Error()
}

// dialTarget turns an etcd endpoint (http://h:p, https://h:p, unix://path, or h:p) into what net.Dial
// takes, and whether it is TLS.
func dialTarget(ep string) (network, addr string, isTLS bool) {
	if !strings.Contains(ep, "://") {
		return "tcp", ep, false
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "tcp", ep, false
	}
	switch u.Scheme {
	case "unix", "unixs":
		return "unix", u.Host + u.Path, u.Scheme == "unixs"
	}
	return "tcp", u.Host, u.Scheme == "https"
}

// errUnprobed marks an endpoint whose probe was not waited for: another one had answered.
var errUnprobed = errors.New("not probed")

// probe dials every endpoint at once; it returns as soon as one accepts (ok) or when all have
// failed, which ctx bounds. A TLS endpoint must also complete its handshake with tc.
func probe(ctx context.Context, endpoints []string, tc *tls.Config) (ok bool, results []probeResult) {
	type indexed struct {
		i   int
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan indexed, len(endpoints))
	results = make([]probeResult, len(endpoints))
	for i, ep := range endpoints {
		results[i] = probeResult{endpoint: ep, err: errUnprobed}
		go func() { ch <- indexed{i, probeOne(ctx, ep, tc, 0)} }()
	}
	// Each dial ends with ctx, so waiting for all of them ends with it too, and every endpoint
	// keeps the reason it gave (a handshake cut short says the connection was made).
	for range endpoints {
		r := <-ch
		results[r.i].err = r.err
		if r.err == nil {
			return true, results
		}
	}
	return false, results
}

// probeOne dials one endpoint. With settle > 0 it then reads for that long: a TLS 1.3 server
// refuses a client certificate only after the client's side of the handshake is done.
func probeOne(ctx context.Context, ep string, tc *tls.Config, settle time.Duration) error {
	network, addr, isTLS := dialTarget(ep)
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if !isTLS && tc == nil {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if tc != nil {
		cfg = tc.Clone()
	}
	if cfg.ServerName == "" && network == "tcp" {
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tconn := tls.Client(conn, cfg)
	if err := tconn.HandshakeContext(ctx); err != nil {
		return &handshakeError{err}
	}
	if settle > 0 {
		_ = tconn.SetReadDeadline(time.Now().Add(settle))
		var ne net.Error
		if _, err := tconn.Read(make([]byte, 1)); err != nil && (!errors.As(err, &ne) || !ne.Timeout()) {
			return &handshakeError{err}
		}
	}
	return nil
}

// handshakeError is a TLS handshake that failed after the connection was accepted.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return "TLS handshake failed: " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// tlsConfig is the client TLS the flags ask for, as cluster.Dial builds it; nil: plain.
func (g *globals) tlsConfig() *tls.Config {
	if g.ca == "" && g.cert == "" && g.key == "" {
		return nil
	}
	tc, err := (&transport.TLSInfo{TrustedCAFile: g.ca, CertFile: g.cert, KeyFile: g.key}).ClientConfig()
	if err != nil {
		return nil // cluster.Dial reports the same error first
	}
	return tc
}

// unanswered reports whether a request's error means etcd never answered it (rather than
// answering with an error of its own).
func unanswered(err error) bool {
	var answer rpctypes.EtcdError
	if errors.As(err, &answer) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}

// explain turns a request that etcd never answered into an error that names the endpoints and
// why each did not answer; other errors pass unchanged.
func (g *globals) explain(err error, waited time.Duration) error {
	if err == nil || !unanswered(err) {
		return err
	}
	var ue *unreachableError
	if errors.As(err, &ue) {
		return err
	}
	// What the dial found stands where it is a failure; the endpoints that accepted, and those
	// it did not wait for, are dialled again and watched a little longer.
	results := slices.Clone(g.probed)
	if len(results) == 0 {
		for _, ep := range g.endpointList() {
			results = append(results, probeResult{endpoint: ep, err: errUnprobed})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), diagnoseTimeout)
	defer cancel()
	tc := g.tlsConfig()
	done := make(chan struct{})
	n := 0
	for i, r := range results {
		if r.err == nil || errors.Is(r.err, errUnprobed) {
			n++
			go func() {
				results[i].err = probeOne(ctx, r.endpoint, tc, settle)
				done <- struct{}{}
			}()
		}
	}
	for range n {
		<-done
	}
	return &unreachableError{endpoints: g.endpoints, tried: results, waited: waited, err: err}
}

// reachable dials every endpoint before the first request: when each one refuses or does not
// exist, waiting out the request's deadline would tell the user nothing more. An endpoint that
// does not answer within precheckTimeout is left to the request.
func (g *globals) reachable() error {
	ctx, cancel := context.WithTimeout(context.Background(), min(g.timeout, precheckTimeout))
	defer cancel()
	ok, results := probe(ctx, g.endpointList(), g.tlsConfig())
	g.probed = results
	if ok || slices.ContainsFunc(results, func(r probeResult) bool { return !r.definite() }) {
		return nil
	}
	return &unreachableError{endpoints: g.endpoints, tried: results}
}

const (
	// precheckTimeout bounds the dial before the first request: a connection on a working
	// network is made well within it, and a silent address costs at most this much more.
	precheckTimeout = time.Second
	// diagnoseTimeout bounds a probe that only explains a request's failure.
	diagnoseTimeout = 2 * time.Second
	// settle is how long that probe waits for a TLS server's late refusal.
	settle = 300 * time.Millisecond
)
