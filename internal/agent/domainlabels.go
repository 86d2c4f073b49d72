package agent

import (
	"context"
	"log/slog"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/kubenode"
)

// NodeLabels returns the labels of the Kubernetes Node named node.
type NodeLabels func(ctx context.Context, node string) (map[string]string, error)

// inClusterLabels reads the Node from the API server with the pod's service account.
func inClusterLabels(ctx context.Context, node string) (map[string]string, error) {
	c, err := kubenode.InCluster()
	if err != nil {
		return nil, err
	}
	return c.Labels(ctx, node)
}

// resolveDomain sets etcd.domain from the Node's labels when etcd.domain-labels names them
// (with capping on a cluster budget). A node whose labels give no domain does not start (or
// keeps its running configuration on a reload) rather than join its group's root: counted
// only against the group, it would be invisible to its rack's limit.
func resolveDomain(ctx context.Context, cfg *config.Config, labels NodeLabels, log *slog.Logger) error {
	e := &cfg.Etcd
	if !cfg.Capping.Enabled || cfg.Budget.Source != "etcd" || e.DomainLabels == "" {
		return nil
	}
	if labels == nil {
		labels = inClusterLabels
	}
	fail := func(err error) error {
		return cfg.ErrorAt("etcd.domain-labels", e.DomainLabels, "gives no power domain for node "+cfg.Node.Name+": "+err.Error(), err)
	}
	l, err := labels(ctx, cfg.Node.Name)
	if err != nil {
		return fail(err)
	}
	p, err := kubenode.DomainPath(e.Group, config.DomainLabelKeys(e.DomainLabels), cfg.Node.Name, l)
	if err != nil {
		return fail(err)
	}
	e.Domain = p
	log.Info("power domain from the node's labels", "node", cfg.Node.Name, "labels", e.DomainLabels, "domain", p)
	return nil
}
