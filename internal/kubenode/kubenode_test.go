package kubenode

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/internal/testpki"
)

// nodeJSON is a Node as the API server returns it (trimmed of most of its status).
const nodeJSON = `{
  "kind": "Node",
  "apiVersion": "v1",
  "metadata": {
    "name": "gpu-17",
    "uid": "4b0c8b4e-4f0e-4f43-9d3e-0a4e1f6f3c1d",
    "resourceVersion": "918273",
    "creationTimestamp": "2026-11-02T09:14:03Z",
    "labels": {
      "kubernetes.io/hostname": "gpu-17",
      "kubernetes.io/os": "linux",
      "nvidia.com/gpu.present": "true",
      "capstan.io/hall": "hall1",
      "capstan.io/row": "row3",
      "capstan.io/rack": "rack12"
    },
    "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
  },
  "spec": {"podCIDR": "10.244.3.0/24", "providerID": "metal://gpu-17"},
  "status": {
    "capacity": {"cpu": "128", "memory": "2113249264Ki", "nvidia.com/gpu": "8"},
    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    "nodeInfo": {"kubeletVersion": "v1.34.2", "kernelVersion": "6.8.0-49-generic"}
  }
}`

const forbiddenJSON = `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",` +
	`"message":"nodes \"gpu-17\" is forbidden: User \"system:serviceaccount:capstan-system:capstan\" cannot get resource \"nodes\" in API group \"\" at the cluster scope",` +
	`"reason":"Forbidden","details":{"name":"gpu-17","kind":"nodes"},"code":403}`

// apiServer serves GET /api/v1/nodes/gpu-17 over TLS to the bearer token "sa-token" (403 to any
// other token, as an API server does for a service account without the role); a client for it
// with the token and CA in files.
func apiServer(t *testing.T, token string) (*httptest.Server, Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("Authorization") == "" || r.Header.Get("Authorization") == "Bearer ":
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"Unauthorized","code":401}`))
		case r.Header.Get("Authorization") != "Bearer sa-token":
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(forbiddenJSON))
		case r.Method != http.MethodGet:
			w.WriteHeader(http.StatusMethodNotAllowed)
		case r.URL.Path == "/api/v1/nodes/gpu-17":
			_, _ = w.Write([]byte(nodeJSON))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"nodes \"x\" not found","reason":"NotFound","code":404}`))
		}
	}))
	// The API server's certificate is signed by the cluster CA, whose certificate the pod reads.
	pki := testpki.New(t)
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes the tests provoke
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	c := Client{Server: srv.URL, TokenFile: filepath.Join(dir, "token"), CAFile: pki.CAFile}
	if err := os.WriteFile(c.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func TestLabels(t *testing.T) {
	_, c := apiServer(t, "sa-token")
	labels, err := c.Labels(context.Background(), "gpu-17")
	if err != nil {
		t.Fatal(err)
	}
	if labels["capstan.io/rack"] != "rack12" || labels["capstan.io/hall"] != "hall1" || len(labels) != 6 {
		t.Errorf("labels %v", labels)
	}
}

// Each failure says what went wrong and what to set.
func TestLabelsErrors(t *testing.T) {
	_, c := apiServer(t, "sa-token")
	ctx := context.Background()
	check := func(name string, c Client, node string, want ...string) {
		t.Helper()
		_, err := c.Labels(ctx, node)
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to say %q", name, err, w)
			}
		}
	}
	check("another node", c, "gpu-18", "no Node of that name", "$NODE_NAME")

	other := c // another service account's token
	other.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(other.TokenFile, []byte("other-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("no role", other, "gpu-17", "forbidden (403)", "get on nodes", "rbac.create", `cannot get resource "nodes"`)

	empty := c
	empty.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty.TokenFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	check("empty token", empty, "gpu-17", "token file", "is empty")

	noToken := c
	noToken.TokenFile = filepath.Join(t.TempDir(), "missing")
	check("no token file", noToken, "gpu-17", "service account token", "automountServiceAccountToken")

	// A CA that did not sign the server's certificate.
	wrongCA := c
	wrongCA.CAFile = testpki.New(t).CAFile
	check("wrong CA", wrongCA, "gpu-17", "unreachable", "certificate")

	badCA := c
	badCA.CAFile = c.TokenFile
	check("not a CA", badCA, "gpu-17", "holds no PEM certificate")

	down := c
	srv2 := httptest.NewServer(http.NotFoundHandler())
	down.Server = srv2.URL
	srv2.Close()
	check("API down", down, "gpu-17", "unreachable", srv2.URL)
}

func TestInCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	c, err := InCluster()
	if err != nil || c.Server != "https://[fd00::1]:443" || c.TokenFile != DefaultTokenFile || c.CAFile != DefaultCAFile {
		t.Errorf("InCluster() = %+v, %v", c, err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster(); err == nil || !strings.Contains(err.Error(), "set etcd.domain instead") {
		t.Errorf("outside a pod: %v, want an error that says to set etcd.domain", err)
	}
}
