package cluster

import (
	"context"
	"fmt"
	"math"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/capstan-power/capstan/capping/budget"
)

// nodeReport is what the member keeps of the controller's reports.
type nodeReport struct {
	bounded    bool    // a report with valid bounds came
	minW, maxW float64 // the latest valid bounds
	badLogged  bool    // invalid bounds were logged once
	drawW      float64
	drawAt     time.Time // when the latest draw came, on the member's clock; zero: none yet
}

// Report takes the controller's view of the node: its bounds become the node's range in the
// group, its draw the basis of the node's demand. The first report with valid bounds lets Run
// register the node; a report without valid bounds (no capped GPU left) keeps the last ones, so
// the group never sees a range the node does not have. A report whose draw is not OK keeps the
// last draw, which ages out after the lease TTL (see demand).
func (m *Member) Report(r budget.NodeReport) {
	now := m.o.Now()
	m.mu.Lock()
	n := &m.node
	first, moved := false, false
	if r.MinW > 0 && r.MaxW >= r.MinW && r.MaxW < MaxWatts {
		first = !n.bounded
		moved = !first && (r.MinW != n.minW || r.MaxW != n.maxW)
		n.bounded, n.minW, n.maxW = true, r.MinW, r.MaxW
		// The controller never sets a GPU below its minimum: that is what the node applies
		// until it records more.
		m.applied = math.Max(m.applied, r.MinW)
	} else if !n.badLogged {
		n.badLogged = true
		m.log.Warn("cluster: the controller reported no valid limit bounds; the group keeps the last ones", "min_w", r.MinW, "max_w", r.MaxW)
	}
	if r.DrawOK {
		n.drawW, n.drawAt = r.DrawW, now
	}
	m.mu.Unlock()
	switch {
	case first:
		close(m.bounded)
	case moved:
		m.wake()
	}
}

// demandLocked estimates what the node would draw: a node that draws close to what it applies
// is power-bound and asks for a tenth of its maximum more; one that draws less asks for its
// draw plus a margin. Before a first draw it asks for its maximum, as a node that may be
// power-bound. Once the last draw is older than the lease TTL (the controller stopped
// reporting, or has no readings), it asks for what it applies: it can no longer show a need
// for more, and its GPUs may still draw up to their limits, so it gives nothing away either.
func (m *Member) demandLocked(now time.Time) float64 {
	n := m.node
	var d float64
	switch {
	case n.drawAt.IsZero():
		d = n.maxW
	case now.Sub(n.drawAt) > m.o.LeaseTTL:
		d = m.applied
	default:
		d = n.drawW + 0.05*n.maxW
		if n.drawW >= 0.9*m.applied {
			d = math.Max(n.drawW, m.applied) + 0.1*n.maxW
		}
	}
	return math.Min(math.Max(d, n.minW), n.maxW)
}

// hysteresis is how far demand must move before the node rewrites it: a steady node writes
// nothing but its acknowledgements.
func (m *Member) hysteresis() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return math.Max(0.05*m.node.maxW, 10)
}

// putNode writes the node record under its lease with its current demand and bounds, and
// returns what it wrote.
func (m *Member) putNode(ctx context.Context) (NodeRecord, error) {
	m.mu.Lock()
	rec := m.recordLocked(m.o.Now())
	lease := m.lease
	m.mu.Unlock()
	if _, err := m.o.Client.Put(ctx, m.o.Keys.Node(m.o.Node), mustJSON(rec), clientv3.WithLease(lease)); err != nil {
		return rec, fmt.Errorf("writing node record: %w", err)
	}
	return rec, nil
}

// recordLocked is the node record as the member writes it at now.
func (m *Member) recordLocked(now time.Time) NodeRecord {
	rec := NodeRecord{DemandW: m.demandLocked(now), MinW: m.node.minW, MaxW: m.node.maxW, Priority: m.o.Priority,
		AppliedW: m.applied, AckedGen: m.appliedGen, Lease: int64(m.lease), UpdatedAt: now.UTC(), Domain: m.o.Domain}
	// A node at the root of a flat group writes the record older agents read (they refuse
	// unknown fields): its draw goes only into a tree's records.
	if m.o.Domain != "" && !m.node.drawAt.IsZero() && now.Sub(m.node.drawAt) <= m.o.LeaseTTL {
		rec.DrawW = math.Min(m.node.drawW, MaxWatts-1)
	}
	return rec
}

// report rewrites the node record when an acknowledgement is due, the bounds changed, or demand
// moved past the hysteresis.
func (m *Member) report(ctx context.Context) {
	t := time.NewTicker(m.o.Period)
	defer t.Stop()
	var last NodeRecord
	written := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.nudge:
		case <-t.C:
		}
		if !m.due(last, written) {
			continue
		}
		rctx, cancel := m.reqCtx(ctx)
		rec, err := m.putNode(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.countErr("request", err)
			}
			continue
		}
		last, written = rec, true
	}
}

// due reports whether the node record must be written again, last having been written (if
// written): an acknowledgement is due, the bounds or the domain changed, or demand moved past
// the hysteresis.
func (m *Member) due(last NodeRecord, written bool) bool {
	m.mu.Lock()
	d := m.demandLocked(m.o.Now())
	same := written && m.appliedGen == last.AckedGen && m.node.minW == last.MinW && m.node.maxW == last.MaxW && m.o.Domain == last.Domain
	m.mu.Unlock()
	return !same || math.Abs(d-last.DemandW) > m.hysteresis()
}
