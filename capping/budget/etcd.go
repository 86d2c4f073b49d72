package budget

import (
	"context"
	"time"
)

// Granter is a node's membership of a cluster group (package capping/cluster).
type Granter interface {
	// Grant returns the watts the node may apply now and the grant's generation (0 for the
	// node's minimum before a first grant, or its floor once cut off), without blocking on etcd.
	Grant() (watts float64, generation int64)
	// Applied records that the node's limits are within watts of that generation, and
	// acknowledges the generation to the allocator.
	Applied(watts float64, generation int64)
	// Report takes the controller's view of the node: its draw is the node's demand, its
	// bounds the node's range in the group. Until a first report with bounds the node is not
	// registered and Grant has nothing to give (0 W).
	Report(r NodeReport)
	// Floor is what the group keeps for the node once it is gone.
	Floor() float64
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

// Current returns the grant the node should apply from now on; ok is false until the member
// knows the node's bounds from a first Report (the controller reports at its start, before it
// reads a budget).
func (e *Etcd) Current() (Budget, bool) {
	w, gen := e.m.Grant()
	return Budget{Watts: w, Source: "etcd", Received: e.now(), Generation: gen}, w > 0
}

// Applied acknowledges the grant once the controller's limits are within it.
func (e *Etcd) Applied(b Budget) { e.m.Applied(b.Watts, b.Generation) }

// Report passes the controller's view of the node on to the group: the draw is the node's
// demand, MinW and MaxW the range its grants may take.
func (e *Etcd) Report(r NodeReport) { e.m.Report(r) }

// LeaveWatts is the node's floor: the group reserves no more for a node whose agent stopped.
func (e *Etcd) LeaveWatts() float64 { return e.m.Floor() }

// Run keeps the node in its group until ctx is done.
func (e *Etcd) Run(ctx context.Context) { e.m.Run(ctx) }

// The etcd source takes every contract the controller offers a source.
var (
	_ Source       = (*Etcd)(nil)
	_ Acknowledger = (*Etcd)(nil)
	_ Reporter     = (*Etcd)(nil)
	_ Leaver       = (*Etcd)(nil)
)
