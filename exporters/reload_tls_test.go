package exporters

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/sample"
)

// tlsWebConfig writes a self-signed certificate for 127.0.0.1 and a web config file serving it.
func tlsWebConfig(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "capstan-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cert := write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyFile := write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return write("web.yml", []byte("tls_server_config:\n  cert_file: "+cert+"\n  key_file: "+keyFile+"\n"))
}

// Over TLS too, a connection accepted before a reload on which the client has sent nothing yet
// (not even its ClientHello) goes to the next server, which completes the handshake and answers.
func TestTLSConnectionGoesToTheNextServer(t *testing.T) {
	webConfig := tlsWebConfig(t)
	k := NewListeners()
	defer k.Close()
	store := sample.NewStore()
	start := func() *Exporters {
		cfg := testConfig()
		cfg.Web.ListenAddress = "127.0.0.1:0"
		cfg.Web.Config.File = webConfig
		e, err := New(context.Background(), Options{Config: cfg, Store: store, Version: "1.2.3-test", Listeners: k})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return e
	}
	first := start()
	addr := first.Addr().String()
	clientTLS := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // a test's self-signed certificate
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	// A whole scrape on another connection: the server has accepted raw by its end.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}}
	resp, err := client.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	client.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	second := start()
	shutdownAtEnd(t, second)

	conn := tls.Client(raw, clientTLS)
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatalf("TLS on a connection from before the reload: %v", err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a scrape over TLS on a connection from before the reload got no answer: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a scrape over TLS on a connection from before the reload: status %d", resp.StatusCode)
	}
}
