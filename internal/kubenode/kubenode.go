// Package kubenode reads the agent's own Node from the Kubernetes API server with the pod's
// service account, for the labels that give its power domain (etcd.domain-labels; the agent
// turns them into a path). It speaks plain HTTPS: client-go would add megabytes to an agent whose
// memory is a target, for one GET.
package kubenode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The service account's files, as the kubelet mounts them into every pod that automounts them.
const (
	DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// maxNodeBytes bounds the Node object read: a Node with many images in its status runs to a
// few hundred kilobytes.
const maxNodeBytes = 8 << 20

// Client reads Nodes from one API server.
type Client struct {
	// Server is the API server's base URL, https://host:port.
	Server string
	// TokenFile holds the bearer token; it is read at every request, since the kubelet rotates
	// bound service account tokens.
	TokenFile string
	// CAFile holds the PEM certificates that sign the API server's certificate.
	CAFile string
	// Timeout bounds one request; zero means 10 s.
	Timeout time.Duration
}

// InCluster is the Client of a pod: the API server from $KUBERNETES_SERVICE_HOST and
// $KUBERNETES_SERVICE_PORT, the service account's token and CA files.
func InCluster() (Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return Client{}, errors.New("not in a Kubernetes pod: $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT are unset " +
			"(node labels are read from the API server; outside Kubernetes set etcd.domain instead)")
	}
	return Client{Server: "https://" + net.JoinHostPort(host, port), TokenFile: DefaultTokenFile, CAFile: DefaultCAFile}, nil
}

// Labels returns the labels of the Node named node.
func (c Client) Labels(ctx context.Context, node string) (map[string]string, error) {
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the service account token: %w (the pod needs automountServiceAccountToken)", err)
	}
	bearer := strings.TrimSpace(string(token))
	if bearer == "" {
		return nil, fmt.Errorf("the service account token file %s is empty", c.TokenFile)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := strings.TrimSuffix(c.Server, "/") + "/api/v1/nodes/" + url.PathEscape(node)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("reading Node %s: %w", node, err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading Node %s: the API server %s is unreachable: %w "+
			"(the pod reaches it at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; check NetworkPolicies and the cluster's CA)", node, c.Server, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxNodeBytes))
	if err != nil {
		return nil, fmt.Errorf("reading Node %s from %s: %w", node, c.Server, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return nil, fmt.Errorf("reading Node %s: the API server refused the service account token (401 Unauthorized)", node)
	case http.StatusForbidden:
		return nil, fmt.Errorf("reading Node %s: forbidden (403): the service account needs get on nodes "+
			"(a ClusterRole with get on nodes bound to it; the Helm chart creates it with rbac.create): %s", node, apiMessage(body))
	case http.StatusNotFound:
		return nil, fmt.Errorf("reading Node %s: there is no Node of that name (node.name comes from $NODE_NAME, which the DaemonSet sets from spec.nodeName)", node)
	default:
		return nil, fmt.Errorf("reading Node %s: the API server answered %s: %s", node, resp.Status, apiMessage(body))
	}
	var n struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, fmt.Errorf("reading Node %s: the API server's answer is not a Node: %w", node, err)
	}
	if n.Kind != "Node" || n.Metadata.Name != node {
		return nil, fmt.Errorf("reading Node %s: the API server answered a %q named %q", node, n.Kind, n.Metadata.Name)
	}
	return n.Metadata.Labels, nil
}

// apiMessage is the message of a Kubernetes Status answer, else the start of the body.
func apiMessage(body []byte) string {
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		return st.Message
	}
	const most = 200
	if len(body) > most {
		body = body[:most]
	}
	return strings.TrimSpace(string(body))
}

func (c Client) httpClient() (*http.Client, error) {
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the API server's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the API server's CA file %s holds no PEM certificate", c.CAFile)
	}
	// One request at start and per reload: no connection is kept open between them.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}
	return &http.Client{Transport: tr}, nil
}
