package agent

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

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
	p, err := domainPath(e.Group, config.DomainLabelKeys(e.DomainLabels), cfg.Node.Name, l)
	if err != nil {
		return fail(err)
	}
	e.Domain = p
	log.Info("power domain from the node's labels", "node", cfg.Node.Name, "labels", e.DomainLabels, "domain", p)
	return nil
}

// domainPath is the power domain path of a node: group, then the values of the label keys in
// order (etcd.domain-labels). Label values cannot hold "/", so each label is one level of the
// electrical tree (hall, row, rack) rather than one label holding an encoded path.
func domainPath(group string, keys []string, node string, labels map[string]string) (string, error) {
	segs := []string{group}
	for _, k := range keys {
		v, ok := labels[k]
		switch {
		case !ok:
			return "", fmt.Errorf("no label %s on Node %s, which etcd.domain-labels needs: label it "+
				"(kubectl label node %s %s=VALUE) or leave it out of etcd.domain-labels", k, node, node, k)
		case v == "":
			return "", fmt.Errorf("label %s on Node %s is empty: give it the name of its power domain "+
				"(kubectl label --overwrite node %s %s=VALUE)", k, node, node, k)
		}
		if err := config.ValidName(v); err != nil || v == "." || v == ".." {
			return "", fmt.Errorf("label %s=%s on Node %s is not one level of a domain path (allowed: letters, digits, - _ . :, no /)", k, v, node)
		}
		segs = append(segs, v)
	}
	p := strings.Join(segs, "/")
	if err := config.ValidDomainPath(p); err != nil {
		return "", fmt.Errorf("labels %s on Node %s give %q, not a domain path: %w", strings.Join(keys, ","), node, p, err)
	}
	return p, nil
}
