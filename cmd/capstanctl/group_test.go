package main

import (
	"context"
	"encoding/json"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/etcdtest"
)

// etcdGroup is a fresh one-member etcd, a client on it and a 60 s lease, for writing a group's
// records as its agents would before capstanctl reads them.
type etcdGroup struct {
	t     *testing.T
	cli   *clientv3.Client
	k     cluster.Keys // the group's keys under /capstan/v1
	ep    string       // etcd's client address
	lease clientv3.LeaseID
}

// newEtcdGroup starts etcd, opens a client on it (closed when the test ends) and grants a lease.
func newEtcdGroup(t *testing.T, group string) *etcdGroup {
	t.Helper()
	_, eps := etcdtest.Start(t, 1, nil)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	lease, err := cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	return &etcdGroup{t: t, cli: cli, k: cluster.Keys{Prefix: "/capstan/v1", Group: group}, ep: eps[0], lease: lease.ID}
}

// put writes v as JSON at key; the test fails if etcd refuses it.
func (g *etcdGroup) put(key string, v any, opts ...clientv3.OpOption) {
	g.t.Helper()
	b, _ := json.Marshal(v)
	if _, err := g.cli.Put(context.Background(), key, string(b), opts...); err != nil {
		g.t.Fatal(err)
	}
}
