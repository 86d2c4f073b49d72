package cluster

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// SetDomain checks and writes the domain at path (the group, then the domains below it). The
// group itself is the root: its limit is the group budget (SetBudgetNeed, keeping the floor per
// node). A domain below it is refused, with the numbers, when its parent does not exist (a
// parent is set before its children), when its limit is not a finite number of watts from
// MinBudgetW, when its guard band or priority are out of range, or when its limit is below
// what the nodes under it need at least (their floors, and what gone nodes keep reserved).
func SetDomain(ctx context.Context, c *clientv3.Client, prefix, path string, rec DomainRecord) (Need, error) {
	group, rel, err := SplitPath(path)
	if err != nil {
		return Need{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	k := Keys{Prefix: prefix, Group: group}
	if math.IsNaN(rec.LimitW) || math.IsInf(rec.LimitW, 0) || rec.LimitW < MinBudgetW || rec.LimitW >= MaxWatts {
		return Need{}, fmt.Errorf("%w: limit %v W for domain %s: must be a finite number of watts from %d up to %g", ErrRefused, rec.LimitW, path, MinBudgetW, MaxWatts)
	}
	if math.IsNaN(rec.GuardBand) || rec.GuardBand < 0 || rec.GuardBand > MaxGuardBand {
		return Need{}, fmt.Errorf("%w: guard band %v for domain %s: allowed 0 to %g (a share of the limit)", ErrRefused, rec.GuardBand, path, MaxGuardBand)
	}
	if math.IsNaN(rec.Priority) || rec.Priority != 0 && (rec.Priority < 1 || rec.Priority > 1000) {
		return Need{}, fmt.Errorf("%w: priority %v for domain %s: allowed 1 to 1000", ErrRefused, rec.Priority, path)
	}
	if rec.SetAt.IsZero() {
		rec.SetAt = time.Now().UTC()
	}
	if rel == "" {
		if rec.GuardBand != 0 || rec.Priority != 0 {
			return Need{}, fmt.Errorf("%w: domain %s is the group's root: its limit is the group budget, which takes no guard band or priority (set those on the domains below it)", ErrRefused, path)
		}
		b := BudgetRecord{Watts: rec.LimitW, SetBy: rec.SetBy, SetAt: rec.SetAt, Reason: rec.Reason}
		if old, err := GetBudget(ctx, c, k); err == nil {
			b.FloorPerNodeW = old.FloorPerNodeW
		}
		return SetBudgetNeed(ctx, c, k, b)
	}
	v := NewView(k)
	if _, err := v.Load(ctx, c); err != nil {
		return Need{}, err
	}
	parent := parentOf(rel)
	if _, ok := v.Domains[parent]; parent != "" && !ok || parent == "" && !v.HasBudget {
		return Need{}, fmt.Errorf("%w: the parent of domain %s, %s, does not exist: set it first (capstanctl domain set %s WATTS)",
			ErrRefused, path, FullPath(group, parent), FullPath(group, parent))
	}
	n := needUnder(v, rel)
	if rec.LimitW*(1-rec.GuardBand) < n.AtLeastW() {
		return n, fmt.Errorf("%w: limit %.0f W (less a guard band of %g) for domain %s is below the %.0f W it needs at least: %.0f W for its %d live nodes (Σ of each node's max(min, floor)) plus %.0f W reserved for nodes that are gone (%d; capstanctl drain releases them); set at least %.0f W",
			ErrRefused, rec.LimitW, rec.GuardBand, path, n.AtLeastW(), n.LiveW, n.Live, n.ReservedW, n.Gone, math.Ceil(n.AtLeastW()/(1-rec.GuardBand)))
	}
	// The parent must still exist when the domain is written: a domain removed meanwhile would
	// leave an orphan (which the allocator would pass through, but an SRE did not mean).
	cmp := clientv3.Compare(clientv3.CreateRevision(k.Domain(parent)), ">", 0)
	resp, err := c.Txn(ctx).If(cmp).Then(clientv3.OpPut(k.Domain(rel), mustJSON(rec))).Commit()
	if err != nil {
		return n, fmt.Errorf("writing domain %s: %w", path, err)
	}
	if !resp.Succeeded {
		return n, fmt.Errorf("%w: the parent of domain %s, %s, was removed meanwhile", ErrRefused, path, FullPath(group, parent))
	}
	return n, nil
}

// needUnder is what the nodes under domain rel need at least of its limit: their floors, and what
// gone nodes keep reserved (never below a minimum).
func needUnder(v *View, rel string) Need {
	floor := 0.0
	if v.HasBudget {
		floor = v.Budget.FloorPerNodeW
	}
	var n Need
	for _, node := range v.Nodes {
		if !underRel(node.Domain, rel) {
			continue
		}
		n.LiveW += math.Min(math.Max(node.MinW, floor), node.MaxW)
		n.Live++
		n.JoinerW = math.Max(n.JoinerW, node.MinW)
	}
	for name, g := range v.Grants {
		if _, ok := v.Nodes[name]; !ok && underRel(g.Domain, rel) {
			n.ReservedW += math.Max(math.Min(math.Max(g.Watts, g.PrevW), math.Max(floor, g.MinW)), g.MinW)
			n.Gone++
			n.JoinerW = math.Max(n.JoinerW, g.MinW)
		}
	}
	return n
}

// underRel reports whether a node or grant of domain rel counts under domain d (paths below the
// group; "" is the root).
func underRel(rel, d string) bool {
	return d == "" || rel == d || strings.HasPrefix(rel, d+"/")
}

// GetDomain reads the domain at path; the group's root reads as its budget.
func GetDomain(ctx context.Context, c *clientv3.Client, prefix, path string) (DomainRecord, error) {
	group, rel, err := SplitPath(path)
	if err != nil {
		return DomainRecord{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	k := Keys{Prefix: prefix, Group: group}
	if rel == "" {
		b, err := GetBudget(ctx, c, k)
		if err != nil {
			return DomainRecord{}, err
		}
		return DomainRecord{LimitW: b.Watts, SetBy: b.SetBy, SetAt: b.SetAt, Reason: b.Reason}, nil
	}
	resp, err := c.Get(ctx, k.Domain(rel))
	if err != nil {
		return DomainRecord{}, fmt.Errorf("reading domain %s: %w", path, err)
	}
	if len(resp.Kvs) == 0 {
		return DomainRecord{}, fmt.Errorf("%w: no domain %s (capstanctl domain set %s WATTS)", ErrRefused, path, path)
	}
	r, err := ParseDomain(resp.Kvs[0].Value)
	if err != nil {
		return r, fmt.Errorf("domain %s: %w", path, err)
	}
	return r, nil
}

// RemoveDomain deletes the domain at path. The root (the group's budget) and a domain with
// domains below it are refused; nodes attached to it count in its parent from then on.
func RemoveDomain(ctx context.Context, c *clientv3.Client, prefix, path string) error {
	group, rel, err := SplitPath(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	k := Keys{Prefix: prefix, Group: group}
	if rel == "" {
		return fmt.Errorf("%w: domain %s is the group itself: its limit is the group budget, which is not removed", ErrRefused, path)
	}
	kids := k.Domains() + rel + "/"
	resp, err := c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(kids).WithPrefix(), "=", 0)).
		Then(clientv3.OpDelete(k.Domain(rel))).
		Else(clientv3.OpGet(kids, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1))).
		Commit()
	if err != nil {
		return fmt.Errorf("removing domain %s: %w", path, err)
	}
	if !resp.Succeeded {
		first := ""
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			first = FullPath(group, strings.TrimPrefix(string(r.Kvs[0].Key), k.Domains()))
		}
		return fmt.Errorf("%w: domain %s has domains below it (%s): remove them first", ErrRefused, path, first)
	}
	if dr := resp.Responses[0].GetResponseDeleteRange(); dr == nil || dr.Deleted == 0 {
		return fmt.Errorf("%w: no domain %s", ErrRefused, path)
	}
	return nil
}

// DomainStatus is one domain as capstanctl domain tree and top --tree show it: its limit and
// what the nodes under it (in its whole subtree) are granted, apply, draw and ask for.
type DomainStatus struct {
	Path      string  `json:"path"`
	LimitW    float64 `json:"limit_w"`
	GuardBand float64 `json:"guard_band"`
	Priority  float64 `json:"priority"`
	GrantedW  float64 `json:"granted_w"`
	AppliedW  float64 `json:"applied_w"`
	DrawW     float64 `json:"draw_w"`
	DemandW   float64 `json:"demand_w"`
	// FloorsW is what the domain needs at least: its live nodes' floors and what gone nodes
	// keep reserved. Above the limit, the domain is oversubscribed.
	FloorsW float64 `json:"floors_w"`
	// HeadroomW is the limit less Σ draw: how much more the nodes under it could draw.
	HeadroomW      float64 `json:"headroom_w"`
	Oversubscribed bool    `json:"oversubscribed"`
	Nodes          int     `json:"nodes"`
	Gone           int     `json:"gone"`
	// Implicit: a level with no record of its own (a removed parent of a domain still set);
	// its limit is 0 and only the levels around it bind. Malformed: a record that does not
	// parse, whose limit is unknown.
	Implicit  bool `json:"implicit,omitempty"`
	Malformed bool `json:"malformed,omitempty"`
}

// DomainTree is a group's domains, the shape capstanctl domain tree --json prints.
type DomainTree struct {
	Domains []DomainStatus `json:"domains"`
}

// DomainsOf summarises a view's domains, root first, then by path; under restricts it to
// the domain at that path below the group and its subtree ("" for all).
func DomainsOf(v *View, under string) []DomainStatus {
	t := newDomainTree()
	t.build(v)
	if v.HasBudget {
		t.limit[0], t.rawLimit[0] = v.Budget.Watts, v.Budget.Watts
	}
	n := len(t.path)
	out := make([]DomainStatus, n)
	floor := v.Budget.FloorPerNodeW
	for i, p := range t.path {
		out[i] = DomainStatus{Path: FullPath(v.Keys.Group, p), LimitW: t.rawLimit[i], Implicit: t.implicit[i], Malformed: t.bad[i]}
		if d, ok := v.Domains[p]; ok {
			out[i].GuardBand, out[i].Priority = d.GuardBand, d.weight()
		} else {
			out[i].Priority = 1
		}
		if t.implicit[i] {
			out[i].LimitW = 0
		}
	}
	up := func(d int, f func(s *DomainStatus)) {
		for ; d >= 0; d = t.parent[d] {
			f(&out[d])
		}
	}
	for name, node := range v.Nodes {
		g := v.Grants[name]
		grant := 0.0
		if g.Lease == node.Lease {
			grant = g.Watts
		}
		fl := math.Min(math.Max(node.MinW, floor), node.MaxW)
		up(t.resolve(node.Domain), func(s *DomainStatus) {
			s.Nodes++
			s.GrantedW += grant
			s.AppliedW += node.AppliedW
			s.DrawW += node.DrawW
			s.DemandW += node.DemandW
			s.FloorsW += fl
		})
	}
	for name, g := range v.Grants {
		if _, live := v.Nodes[name]; live {
			continue
		}
		res := math.Max(math.Min(math.Max(g.Watts, g.PrevW), math.Max(floor, g.MinW)), g.MinW)
		up(t.resolve(g.Domain), func(s *DomainStatus) {
			s.Gone++
			s.GrantedW += g.Watts
			s.FloorsW += res
		})
	}
	for i := range out {
		s := &out[i]
		usable := s.LimitW * (1 - s.GuardBand)
		s.Oversubscribed = !s.Implicit && (s.Malformed || s.FloorsW > usable+1e-9)
		if !s.Implicit {
			s.HeadroomW = usable - s.DrawW
		}
	}
	if under != "" {
		out = slices.DeleteFunc(out, func(s DomainStatus) bool {
			rel := strings.TrimPrefix(strings.TrimPrefix(s.Path, v.Keys.Group), "/")
			return !underRel(rel, under)
		})
	}
	slices.SortStableFunc(out, func(a, b DomainStatus) int { return strings.Compare(a.Path, b.Path) })
	return out
}
