package budget

import (
	"context"
	"time"
)

// Granter is a node's membership of a cluster group (package capping/cluster): Grant returns the
// watts the node may apply now, without blocking on etcd, and records that they are applied.
type Granter interface {
	Grant() float64
	Run(ctx context.Context)
}

// Etcd is the budget of a node in a cluster group: its grant from the group's allocator. The
// member behind it holds the grant for the lease TTL after etcd last answered and then returns
// the node's floor itself, so the budget handed to the controller never expires: a cut-off node
// is steered to its floor, which the allocator keeps reserved, rather than to the fallback.
type Etcd struct {
	m   Granter
	now func() time.Time
}

// NewEtcd wraps a cluster member as a budget source.
func NewEtcd(m Granter, now func() time.Time) *Etcd { return &Etcd{m: m, now: now} }

// Name is "etcd".
func (e *Etcd) Name() string { return "etcd" }

// Current returns the grant the node applies from now on; the member acknowledges it to the
// allocator.
func (e *Etcd) Current() (Budget, bool) {
	return Budget{Watts: e.m.Grant(), Source: "etcd", Received: e.now()}, true
}

// Run keeps the node in its group until ctx is done.
func (e *Etcd) Run(ctx context.Context) { e.m.Run(ctx) }
