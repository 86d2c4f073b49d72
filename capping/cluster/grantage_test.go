package cluster_test

import (
	"testing"
	"time"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/etcdtest"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// grantAge reads the member's published grant age and lease TTL from the store.
func grantAge(a *agent) (age, ttl float64, ok bool) {
	a.store.View(cluster.StoreKey, func(b *sample.Batch) {
		if b == nil {
			return
		}
		var ok1, ok2 bool
		age, ok1 = b.Find(metrics.ClusterGrantAge)
		ttl, ok2 = b.Find(metrics.ClusterLeaseTTL)
		ok = ok1 && ok2
	})
	return age, ttl, ok
}

// The grant age says exactly how long the node has held its grant without etcd answering: it
// stays within the lease TTL while etcd answers, passes it when the node is cut off (and drops
// to its floor), and falls back once etcd answers again.
func TestGrantAgeFollowsEtcdAnswers(t *testing.T) {
	_, eps := etcdtest.Start(t, 1, nil)
	admin := newClient(t, eps, "", "")
	setBudget(t, admin, 2000, 500)
	px := startProxy(t, eps[0])
	a := startAgent(t, "node-0", newClient(t, []string{mustURL(t, px.From()).Host}, "", ""), 2, 1)
	testkit.Eventually(t, 10*time.Second, "a grant above the floor", func() bool { return a.member.AppliedW() > 500 })
	age, ttl, ok := grantAge(a)
	if !ok || ttl != leaseTTL.Seconds() || age < 0 || age > ttl {
		t.Fatalf("while etcd answers: grant age %v, lease TTL %v (published %v); want 0 ≤ age ≤ TTL %v", age, ttl, ok, leaseTTL.Seconds())
	}

	px.PauseTx()
	px.PauseRx()
	testkit.Eventually(t, 10*leaseTTL, "the grant age to pass the lease TTL, on the floor", func() bool {
		age, ttl, _ := grantAge(a)
		return age > ttl && a.member.AppliedW() <= 500
	})
	px.UnpauseTx()
	px.UnpauseRx()
	testkit.Eventually(t, 10*time.Second, "the grant age back within the TTL", func() bool {
		age, ttl, _ := grantAge(a)
		return age <= ttl && a.member.AppliedW() > 500
	})
}
