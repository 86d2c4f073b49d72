package cluster

import (
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/sample"
)

// ConnFrom turns the validated --etcd.* settings into a Conn.
func ConnFrom(e config.Etcd) Conn {
	return Conn{Endpoints: SplitEndpoints(e.Endpoints), CAFile: e.TLS.CAFile, CertFile: e.TLS.CertFile,
		KeyFile: e.TLS.KeyFile, Username: e.Username, PasswordFile: e.PasswordFile}
}

// FromConfig builds the agent's member of its group. The node's bounds and draw come from the
// capping controller's reports through the etcd budget source (budget.Etcd.Report), so the
// group sees the range of the GPUs the controller caps; the member reads nothing from store, it
// only publishes its own series (capstan.cluster.*) there. The caller closes the client after
// the member stopped.
func FromConfig(cfg *config.Config, store *sample.Store, log *slog.Logger, now func() time.Time) (*Member, *clientv3.Client, error) {
	cli, err := Dial(ConnFrom(cfg.Etcd))
	if err != nil {
		return nil, nil, err
	}
	group, domain := GroupOf(cfg.Etcd)
	m, err := NewMember(Options{Client: cli, Keys: Keys{Prefix: cfg.Etcd.Prefix, Group: group}, Domain: domain, Node: cfg.Node.Name,
		LeaseTTL: cfg.Etcd.LeaseTTL, Period: cfg.Capping.Period, Priority: float64(cfg.Etcd.Priority),
		Campaign: true, Store: store, Log: log, Now: now})
	if err != nil {
		_ = cli.Close()
		return nil, nil, err
	}
	return m, cli, nil
}

// GroupOf returns the group of validated --etcd.* settings and the node's domain below it:
// etcd.domain's first segment is the group (etcd.group, when also set, is the same).
func GroupOf(e config.Etcd) (group, domain string) {
	if e.Domain == "" {
		return e.Group, ""
	}
	group, domain, _ = strings.Cut(e.Domain, "/")
	return group, domain
}
