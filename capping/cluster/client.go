package cluster

import (
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Conn says how to reach etcd: the agent's --etcd.* flags and capstanctl's are the same.
type Conn struct {
	Endpoints    []string
	CAFile       string
	CertFile     string
	KeyFile      string
	Username     string
	PasswordFile string
	DialTimeout  time.Duration
}

// SplitEndpoints turns "a:2379, b:2379" into its endpoints.
func SplitEndpoints(s string) []string {
	var out []string
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Dial builds an etcd client. It does not wait for a connection: requests do, under their own
// deadlines, so an agent starts while etcd is down.
func Dial(c Conn) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd: no endpoints (set --etcd.endpoints, e.g. https://etcd-0:2379)")
	}
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		Logger:      zap.NewNop(),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
		info := transport.TLSInfo{TrustedCAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS (ca %q, cert %q, key %q): %w", c.CAFile, c.CertFile, c.KeyFile, err)
		}
		cfg.TLS = tc
	}
	if c.Username != "" {
		if c.PasswordFile == "" {
			return nil, fmt.Errorf("etcd: --etcd.username %q needs --etcd.password-file", c.Username)
		}
		pw, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd: reading password file: %w", err)
		}
		cfg.Username, cfg.Password = c.Username, strings.TrimRight(string(pw), "\r\n")
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(c.Endpoints, ","), err)
	}
	return cli, nil
}
