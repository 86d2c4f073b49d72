package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/internal/panics"
)

// Run registers the node once the controller reported its bounds (see Member) and keeps it
// registered until ctx is done, then revokes the lease so that the group sees the node leave at
// once. Run once.
func (m *Member) Run(ctx context.Context) {
	defer close(m.stopped)
	select {
	case <-m.bounded:
	case <-ctx.Done():
		return
	}
	for ctx.Err() == nil {
		lease, err := m.register(ctx)
		if err != nil {
			m.countErr("request", err)
			sleep(ctx, m.o.Period)
			continue
		}
		m.serve(ctx, lease)
		if ctx.Err() != nil {
			rctx, cancel := context.WithTimeout(context.Background(), m.o.Period)
			_, _ = m.o.Client.Revoke(rctx, lease)
			cancel()
		}
	}
}

// sleep waits d or until ctx is done: the pause before a retry.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// reqCtx bounds one etcd request: half the lease TTL, so a retry fits before the lease ends.
func (m *Member) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, m.o.LeaseTTL/2)
}

// register takes a fresh lease and writes the node record under it. A grant for an older lease
// is not followed: the allocator may have given its watts away while the node was gone.
func (m *Member) register(ctx context.Context) (clientv3.LeaseID, error) {
	rctx, cancel := m.reqCtx(ctx)
	defer cancel()
	sent := m.o.Now()
	lr, err := m.o.Client.Grant(rctx, int64(m.o.LeaseTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("granting a lease: %w", err)
	}
	m.mu.Lock()
	m.lease, m.lastContact, m.haveGrant = lr.ID, sent, false
	m.mu.Unlock()
	if _, err := m.putNode(rctx); err != nil {
		return 0, err
	}
	m.log.Info("cluster: node registered", "node", m.o.Node, "lease", fmt.Sprintf("%x", int64(lr.ID)))
	return lr.ID, nil
}

// serve runs one registration: keep-alives, watches, demand reports and the campaign, until the
// lease is lost or ctx is done.
func (m *Member) serve(ctx context.Context, lease clientv3.LeaseID) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	run := func(name string, f func(context.Context)) {
		wg.Add(1)
		panics.Go(name, func() { defer wg.Done(); f(rctx) })
	}
	run("cluster keep-alive", func(c context.Context) {
		m.keepAlive(c, lease)
		cancel()
	})
	run("cluster grant watch", func(c context.Context) { m.follow(c, m.o.Keys.Grant(m.o.Node), m.onGrant) })
	run("cluster budget watch", func(c context.Context) { m.follow(c, m.o.Keys.Budget(), m.onBudget) })
	run("cluster report", m.report)
	if m.o.Campaign {
		run("cluster campaign", func(c context.Context) { m.campaign(c, lease) })
	}
	wg.Wait()
}

// keepAlive renews the lease through the client's shared keep-alive stream and records when etcd
// last answered; it returns when the lease is gone or cannot be renewed within its TTL. A
// response arrives at most a round trip after etcd renewed the lease, so a cut-off node may
// hold its grant that much past the lease's expiry: the allocator's reservation of a dead
// node's grant (the grace period, at least the TTL) covers it.
func (m *Member) keepAlive(ctx context.Context, lease clientv3.LeaseID) {
	ch, err := m.o.Client.KeepAlive(ctx, lease)
	if err != nil {
		m.countErr("request", err)
		return
	}
	for range ch {
		m.mu.Lock()
		m.lastContact = m.o.Now()
		m.mu.Unlock()
	}
	if ctx.Err() != nil {
		return
	}
	// The channel closes when the lease expired, was revoked, or went unrenewed for its TTL.
	m.countErr("lost_lease", fmt.Errorf("lease %x of node %s could not be renewed", int64(lease), m.o.Node))
}

// follow reads key, then watches it, calling apply with every value; it starts over from a read
// when the watch breaks (no leader, compaction, a dropped connection).
func (m *Member) follow(ctx context.Context, key string, apply func([]byte)) {
	for ctx.Err() == nil {
		rctx, cancel := m.reqCtx(ctx)
		resp, err := m.o.Client.Get(rctx, key)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
			}
			sleep(ctx, m.o.Period)
			continue
		}
		for _, kv := range resp.Kvs {
			apply(kv.Value)
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range m.o.Client.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
			if err := wr.Err(); err != nil {
				m.countErr("request", err)
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					apply(ev.Kv.Value)
				}
			}
		}
		wcancel()
		sleep(ctx, m.o.Period/4)
	}
}

func (m *Member) onGrant(data []byte) {
	g, err := ParseGrant(data)
	if err != nil {
		m.countErr("malformed", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.Lease != int64(m.lease) || m.haveGrant && g.Generation < m.grant.Generation {
		return
	}
	m.grant, m.haveGrant = g, true
}

func (m *Member) onBudget(data []byte) {
	b, err := ParseBudget(data)
	if err != nil {
		m.countErr("malformed", err)
		return
	}
	m.mu.Lock()
	m.budget, m.haveBudget = b, true
	m.mu.Unlock()
}
