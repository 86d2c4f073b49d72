package cluster

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/capstan-power/capstan/internal/panics"
)

// campaign stands for allocator on the node's lease and allocates while elected.
func (m *Member) campaign(ctx context.Context, lease clientv3.LeaseID) {
	// One session per lease: each session keeps its lease alive with a goroutine of its own.
	var sess *concurrency.Session
	for {
		s, err := concurrency.NewSession(m.o.Client, concurrency.WithLease(lease), concurrency.WithContext(ctx))
		if err == nil {
			sess = s
			break
		}
		if ctx.Err() != nil {
			return
		}
		m.countErr("request", err)
		sleep(ctx, m.o.Period)
	}
	// The lease is the node's: Run revokes it, the session only stops renewing it.
	defer sess.Orphan()
	for ctx.Err() == nil {
		select {
		case <-sess.Done():
			return // the lease is gone; serve starts over with a new one
		default:
		}
		el := concurrency.NewElection(sess, m.o.Keys.Election())
		if err := el.Campaign(ctx, m.o.Node); err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
				sleep(ctx, m.o.Period)
			}
			continue
		}
		m.setAllocator(true)
		m.log.Info("cluster: elected allocator", "node", m.o.Node)
		actx, cancel := context.WithCancel(ctx)
		panics.Go("cluster election session", func() {
			select {
			case <-sess.Done():
			case <-actx.Done():
			}
			cancel()
		})
		a := newAllocator(m, el)
		a.run(actx)
		cancel()
		m.setAllocator(false)
		m.log.Info("cluster: no longer allocator", "node", m.o.Node)
		rctx, rcancel := context.WithTimeout(context.Background(), m.o.Period)
		_ = el.Resign(rctx)
		rcancel()
	}
}

func (m *Member) setAllocator(on bool) {
	m.mu.Lock()
	m.allocator = on
	m.mu.Unlock()
	m.publish(m.o.Now())
}
