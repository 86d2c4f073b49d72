// Package budget says how much power a node may draw: the Budget the capping controller steers
// under, and the Sources it comes from (a static value, a watched file; etcd group allocation
// is Etcd, a node's grant from its group through package capping/cluster).
package budget

import (
	"context"
	"fmt"
	"time"
)

// Budget is the node's power budget at one moment.
type Budget struct {
	// Watts is the most the node may draw, as the controller measures it.
	Watts float64
	// Source names where the budget came from (static, file, etcd), for logs and metrics.
	Source string
	// TTL is how long the budget holds after Received without being renewed; zero means it
	// never expires (a static budget). A source that loses its upstream (a deleted file, an
	// etcd partition) keeps returning the last budget, and the TTL bounds how long that is
	// trusted before the controller falls back.
	TTL time.Duration
	// Received is when the source last got or confirmed this budget.
	Received time.Time
	// Generation identifies a cluster grant (etcd); zero for sources without one.
	Generation int64
}

// Expired reports whether the budget's TTL has run out at now.
func (b Budget) Expired(now time.Time) bool {
	return b.TTL > 0 && now.Sub(b.Received) > b.TTL
}

// Valid reports whether the budget can be steered under: positive and finite watts.
func (b Budget) Valid() bool { return b.Watts > 0 && b.Watts < 1e9 }

func (b Budget) String() string {
	if b.TTL == 0 {
		return fmt.Sprintf("%.0f W from %s", b.Watts, b.Source)
	}
	return fmt.Sprintf("%.0f W from %s (ttl %s)", b.Watts, b.Source, b.TTL)
}

// Source supplies the node's budget. The controller calls Current once per control period from
// one goroutine, so Current must be cheap and must not block on the network: a source with an
// upstream (the file watcher here, etcd later) refreshes in Run and Current returns what it
// last had. ok is false until a first valid budget is known.
//
// An etcd source implements the same contract: Run keeps a watch on the node's grant key and
// renews Received on every grant or lease keep-alive, with TTL the lease's TTL; Current never
// waits for etcd.
type Source interface {
	// Name is the source's kind: static, file, etcd.
	Name() string
	// Current returns the latest budget.
	Current() (b Budget, ok bool)
	// Run refreshes the budget until ctx is done; sources without an upstream return at once.
	Run(ctx context.Context)
}

// Acknowledger is a Source that must learn when the node's limits are within a budget it
// handed out. The etcd source acknowledges a grant to its group's allocator only then, so the
// allocator never gives a decrease's watts to other nodes before this node stopped using them.
type Acknowledger interface {
	// Applied says that the node's power limits are now within b.
	Applied(b Budget)
}

// Reporter is a Source that must learn, every control period, what the node draws and the range
// the capped GPUs' limits can take. The etcd source tells its group's allocator, which shares
// the group budget by these demands and bounds. The controller is the one place that decides
// which GPUs are capped, so the bounds come from it, never from a second walk of the GPUs.
type Reporter interface {
	// Report gives the controller's latest view of the node.
	Report(r NodeReport)
}

// NodeReport is what the controller knows of the node after a control period.
type NodeReport struct {
	// DrawW is the node's measured power, as the controller steers it (GPUs, plus RAPL package
	// power with capping.scope node); DrawOK is false until a first measurement.
	DrawW  float64
	DrawOK bool
	// MinW and MaxW are the sums of the capped GPUs' limit constraints.
	MinW, MaxW float64
	// At is when the measurement was taken.
	At time.Time
}

// Leaver is a Source whose budget still binds the node once the agent stops: a cluster group
// keeps only the node's floor for it after it left, so its limits must not be raised past it.
type Leaver interface {
	// LeaveWatts is the most the node's limits may sum to while no agent steers them.
	LeaveWatts() float64
}

// Static is a fixed budget from the configuration; it never expires.
type Static struct{ b Budget }

// NewStatic returns a static budget of watts.
func NewStatic(watts float64, now time.Time) (*Static, error) {
	b := Budget{Watts: watts, Source: "static", Received: now}
	if !b.Valid() {
		return nil, fmt.Errorf("static budget %v W: must be a positive number of watts (--budget.watts)", watts)
	}
	return &Static{b: b}, nil
}

// Name is "static".
func (s *Static) Name() string { return "static" }

// Current returns the configured budget.
func (s *Static) Current() (Budget, bool) { return s.b, true }

// Run returns at once: nothing to refresh.
func (s *Static) Run(context.Context) {}
