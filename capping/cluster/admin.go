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

// MinBudgetW is the smallest group budget SetBudget takes: below a watt a budget is a typo (or
// 1e-300), and it would be stored and shown as "0 W".
const MinBudgetW = 1

// Need is what a group needs of its budget, as SetBudget found it when it wrote one.
type Need struct {
	// LiveW is Σ of each live node's max(min, floor), at most its max, over Live nodes.
	LiveW float64
	Live  int
	// ReservedW is what nodes that are gone keep reserved (Gone of them) until drained.
	ReservedW float64
	Gone      int
	// JoinerW is the largest minimum among the group's nodes: what a node that joins before
	// the allocator has seen it applies, and what the allocator keeps free for it.
	JoinerW float64
}

// AtLeastW is the least budget SetBudget accepts.
func (n Need) AtLeastW() float64 { return n.LiveW + n.ReservedW }

// JoinerShortfall says, when a budget of w leaves no room above the floors for a joiner's
// minimum, what follows and what budget would give that room; it returns "" otherwise. The
// allocator holds every grant at most at its floor, and raises none, while that lasts.
func (n Need) JoinerShortfall(group string, w float64) string {
	if n.JoinerW <= 0 || w >= n.AtLeastW()+n.JoinerW {
		return ""
	}
	return fmt.Sprintf("budget %.0f W for group %s leaves no room for a joining node's minimum (%.0f W) above the %.0f W its nodes need: "+
		"the allocator holds every grant at most at its floor and raises none; %.0f W gives that room",
		w, group, n.JoinerW, n.AtLeastW(), math.Ceil(n.AtLeastW()+n.JoinerW))
}

// SetBudget checks and writes a group budget with its history entry, in one transaction. It is
// refused, with the numbers, when watts is not a finite number of at least MinBudgetW or is
// below what the group needs at least: Σ max(min, floor) of its live nodes plus what nodes
// that are gone keep reserved.
func SetBudget(ctx context.Context, c *clientv3.Client, k Keys, rec BudgetRecord) error {
	_, err := SetBudgetNeed(ctx, c, k, rec)
	return err
}

// SetBudgetNeed is SetBudget, and returns what the group needed when the budget was checked
// (for a caller to warn with Need.JoinerShortfall).
func SetBudgetNeed(ctx context.Context, c *clientv3.Client, k Keys, rec BudgetRecord) (Need, error) {
	if math.IsNaN(rec.Watts) || math.IsInf(rec.Watts, 0) || rec.Watts < MinBudgetW || rec.Watts >= MaxWatts {
		return Need{}, fmt.Errorf("%w: budget %v W for group %s: must be a finite number of watts from %d up to %g", ErrRefused, rec.Watts, k.Group, MinBudgetW, MaxWatts)
	}
	if math.IsNaN(rec.FloorPerNodeW) || math.IsInf(rec.FloorPerNodeW, 0) || rec.FloorPerNodeW < 0 || rec.FloorPerNodeW >= MaxWatts {
		return Need{}, fmt.Errorf("%w: floor per node %v W: must be 0 or a positive finite number of watts", ErrRefused, rec.FloorPerNodeW)
	}
	v := NewView(k)
	if _, err := v.Load(ctx, c); err != nil {
		return Need{}, err
	}
	var n Need
	for _, node := range v.Nodes {
		n.LiveW += math.Min(math.Max(node.MinW, rec.FloorPerNodeW), node.MaxW)
		n.Live++
		n.JoinerW = math.Max(n.JoinerW, node.MinW)
	}
	// A node that is gone keeps at least its floor reserved (its last grant during the
	// allocator's grace period), never below its minimum, until drained: a budget below that
	// would leave the allocator nothing to grant.
	for name, g := range v.Grants {
		if _, ok := v.Nodes[name]; !ok {
			n.ReservedW += math.Max(math.Min(math.Max(g.Watts, g.PrevW), math.Max(rec.FloorPerNodeW, g.MinW)), g.MinW)
			n.Gone++
			n.JoinerW = math.Max(n.JoinerW, g.MinW)
		}
	}
	live, reserved, need := n.LiveW, n.ReservedW, n.AtLeastW()
	switch {
	case rec.Watts < live:
		msg := fmt.Sprintf("budget %.0f W for group %s is below the %.0f W its %d nodes need at least (Σ of each node's max(min, floor %.0f W)); set at least %.0f W",
			rec.Watts, k.Group, live, n.Live, rec.FloorPerNodeW, math.Ceil(live))
		if n.Gone > 0 {
			msg += fmt.Sprintf(", plus the %.0f W reserved for nodes that are gone (%d; capstanctl drain releases them): %.0f W in all", reserved, n.Gone, math.Ceil(need))
		}
		return n, fmt.Errorf("%w: %s", ErrRefused, msg)
	case rec.Watts < need:
		return n, fmt.Errorf("%w: budget %.0f W for group %s is below the %.0f W it needs at least: %.0f W for its %d live nodes (Σ of each node's max(min, floor %.0f W)) plus %.0f W reserved for nodes that are gone (%d; capstanctl drain releases them); set at least %.0f W",
			ErrRefused, rec.Watts, k.Group, need, live, n.Live, rec.FloorPerNodeW, reserved, n.Gone, math.Ceil(need))
	}
	if rec.SetAt.IsZero() {
		rec.SetAt = time.Now().UTC()
	}
	val := mustJSON(rec)
	_, err := c.Txn(ctx).Then(clientv3.OpPut(k.Budget(), val), clientv3.OpPut(k.HistoryKey(rec.SetAt), val)).Commit()
	if err != nil {
		return n, fmt.Errorf("writing budget of group %s: %w", k.Group, err)
	}
	return n, nil
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
