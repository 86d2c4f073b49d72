package cluster

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrRefused marks a request refused for what it asked, not for how etcd answered.
var ErrRefused = errors.New("refused")

// SetBudget checks and writes a group budget with its history entry, in one transaction. It is
// refused, with the numbers, when watts is not a positive finite number or is below what the
// group needs at least: Σ max(min, floor) of its live nodes plus what nodes that are gone keep
// reserved.
func SetBudget(ctx context.Context, c *clientv3.Client, k Keys, rec BudgetRecord) error {
	if math.IsNaN(rec.Watts) || math.IsInf(rec.Watts, 0) || rec.Watts <= 0 || rec.Watts >= MaxWatts {
		return fmt.Errorf("%w: budget %v W for group %s: must be a positive finite number of watts below %g", ErrRefused, rec.Watts, k.Group, MaxWatts)
	}
	if math.IsNaN(rec.FloorPerNodeW) || math.IsInf(rec.FloorPerNodeW, 0) || rec.FloorPerNodeW < 0 || rec.FloorPerNodeW >= MaxWatts {
		return fmt.Errorf("%w: floor per node %v W: must be 0 or a positive finite number of watts", ErrRefused, rec.FloorPerNodeW)
	}
	v := NewView(k)
	if _, err := v.Load(ctx, c); err != nil {
		return err
	}
	live, n := 0.0, 0
	for _, node := range v.Nodes {
		live += math.Min(math.Max(node.MinW, rec.FloorPerNodeW), node.MaxW)
		n++
	}
	// A node that is gone keeps at least its floor reserved (its last grant during the
	// allocator's grace period), never below its minimum, until drained: a budget below that
	// would leave the allocator nothing to grant.
	reserved, gone := 0.0, 0
	for name, g := range v.Grants {
		if _, ok := v.Nodes[name]; !ok {
			reserved += math.Max(math.Min(math.Max(g.Watts, g.PrevW), math.Max(rec.FloorPerNodeW, g.MinW)), g.MinW)
			gone++
		}
	}
	need := live + reserved
	switch {
	case rec.Watts < live:
		msg := fmt.Sprintf("budget %.0f W for group %s is below the %.0f W its %d nodes need at least (Σ of each node's max(min, floor %.0f W)); set at least %.0f W",
			rec.Watts, k.Group, live, n, rec.FloorPerNodeW, math.Ceil(live))
		if gone > 0 {
			msg += fmt.Sprintf(", plus the %.0f W reserved for nodes that are gone (%d; capstanctl drain releases them): %.0f W in all", reserved, gone, math.Ceil(need))
		}
		return fmt.Errorf("%w: %s", ErrRefused, msg)
	case rec.Watts < need:
		return fmt.Errorf("%w: budget %.0f W for group %s is below the %.0f W it needs at least: %.0f W for its %d live nodes (Σ of each node's max(min, floor %.0f W)) plus %.0f W reserved for nodes that are gone (%d; capstanctl drain releases them); set at least %.0f W",
			ErrRefused, rec.Watts, k.Group, need, live, n, rec.FloorPerNodeW, reserved, gone, math.Ceil(need))
	}
	if rec.SetAt.IsZero() {
		rec.SetAt = time.Now().UTC()
	}
	val := mustJSON(rec)
	_, err := c.Txn(ctx).Then(clientv3.OpPut(k.Budget(), val), clientv3.OpPut(k.HistoryKey(rec.SetAt), val)).Commit()
	if err != nil {
		return fmt.Errorf("writing budget of group %s: %w", k.Group, err)
	}
	return nil
}

// GetBudget reads a group's budget.
func GetBudget(ctx context.Context, c *clientv3.Client, k Keys) (BudgetRecord, error) {
	resp, err := c.Get(ctx, k.Budget())
	if err != nil {
		return BudgetRecord{}, fmt.Errorf("reading budget of group %s: %w", k.Group, err)
	}
	if len(resp.Kvs) == 0 {
		return BudgetRecord{}, fmt.Errorf("%w: group %s has no budget (capstanctl budget set %s WATTS)", ErrRefused, k.Group, k.Group)
	}
	return ParseBudget(resp.Kvs[0].Value)
}

// History returns a group's budget changes, oldest first; malformed entries are returned as
// errors beside the good ones.
func History(ctx context.Context, c *clientv3.Client, k Keys) ([]BudgetRecord, []error, error) {
	resp, err := c.Get(ctx, k.History(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("reading budget history of group %s: %w", k.Group, err)
	}
	var out []BudgetRecord
	var bad []error
	for _, kv := range resp.Kvs {
		r, err := ParseBudget(kv.Value)
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", kv.Key, err))
			continue
		}
		out = append(out, r)
	}
	return out, bad, nil
}

// Drain releases the reservation of a node that is gone. A live node is refused: its grant is
// what it runs at.
func Drain(ctx context.Context, c *clientv3.Client, k Keys, node string) error {
	if err := ValidName(node); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k.Node(node)), "=", 0)).
		Then(clientv3.OpDelete(k.Grant(node))).
		Commit()
	if err != nil {
		return fmt.Errorf("draining node %s of group %s: %w", node, k.Group, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: node %s of group %s is alive (registered under its lease); only a node that is gone can be drained", ErrRefused, node, k.Group)
	}
	if dr := resp.Responses[0].GetResponseDeleteRange(); dr == nil || dr.Deleted == 0 {
		return fmt.Errorf("%w: node %s of group %s holds no reservation", ErrRefused, node, k.Group)
	}
	return nil
}

// NodeStatus is one row of capstanctl status.
type NodeStatus struct {
	Node      string    `json:"node"`
	DemandW   float64   `json:"demand_w"`
	GrantW    float64   `json:"grant_w"`
	AppliedW  float64   `json:"applied_w"`
	MinW      float64   `json:"min_w"`
	MaxW      float64   `json:"max_w"`
	Priority  float64   `json:"priority"`
	LastSeen  time.Time `json:"last_seen"`
	Allocator bool      `json:"allocator"`
}

// Status is a group's state, the shape capstanctl status --json prints.
type Status struct {
	Group      string       `json:"group"`
	BudgetW    float64      `json:"budget_w"`
	Generation int64        `json:"generation"`
	Nodes      []NodeStatus `json:"nodes"`
}

// StatusOf summarises a view; allocator is the elected node's name. Nodes that are gone but hold
// a reservation are listed with applied 0 and their last grant.
func StatusOf(v *View, allocator string) Status {
	s := Status{Group: v.Keys.Group, Generation: v.Generation(), Nodes: []NodeStatus{}}
	if v.HasBudget {
		s.BudgetW = v.Budget.Watts
	}
	for name, n := range v.Nodes {
		g := v.Grants[name]
		grant := 0.0
		if g.Lease == n.Lease {
			grant = g.Watts
		}
		s.Nodes = append(s.Nodes, NodeStatus{Node: name, DemandW: n.DemandW, GrantW: grant, AppliedW: n.AppliedW,
			MinW: n.MinW, MaxW: n.MaxW, Priority: n.Priority, LastSeen: n.UpdatedAt, Allocator: name == allocator})
	}
	for name, g := range v.Grants {
		if _, live := v.Nodes[name]; !live {
			s.Nodes = append(s.Nodes, NodeStatus{Node: name, GrantW: g.Watts, MinW: g.MinW, LastSeen: g.At})
		}
	}
	slices.SortFunc(s.Nodes, func(a, b NodeStatus) int {
		switch {
		case a.Node < b.Node:
			return -1
		case a.Node > b.Node:
			return 1
		}
		return 0
	})
	return s
}

// Allocator returns the name of the group's elected allocator, or "" when there is none.
func Allocator(ctx context.Context, c *clientv3.Client, k Keys) (string, error) {
	resp, err := c.Get(ctx, k.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("reading the allocator of group %s: %w", k.Group, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}
