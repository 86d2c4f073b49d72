package cluster

import (
	"context"
	"fmt"
	"math"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// View is a group's records as read from etcd: the last good value of each key.
type View struct {
	Keys      Keys
	Budget    BudgetRecord
	HasBudget bool
	Nodes     map[string]NodeRecord
	Grants    map[string]GrantRecord
	State     StateRecord
	// Domains are the domains below the root, by path below the group.
	Domains  map[string]DomainRecord
	Revision int64
	// DomainsChanged counts changes to Domains (and badDomains): the allocator rebuilds its
	// tree when it moves.
	DomainsChanged int
	// badDomains names the domains whose records are malformed and were never read: their
	// limit is unknown, so the allocator holds their nodes at their floors.
	badDomains map[string]bool
	// unread names the grants whose records are malformed and were never read: what their
	// nodes run at is unknown.
	unread map[string]bool
}

// NewView returns an empty view of a group.
func NewView(k Keys) *View {
	return &View{Keys: k, Nodes: map[string]NodeRecord{}, Grants: map[string]GrantRecord{}, unread: map[string]bool{},
		Domains: map[string]DomainRecord{}, badDomains: map[string]bool{}}
}

// Apply folds one key's new value (nil: deleted) into the view. A malformed value leaves the
// last good one and returns the parse error.
func (v *View) Apply(key string, value []byte) error {
	if v.unread == nil {
		v.unread = map[string]bool{}
	}
	if v.Domains == nil {
		v.Domains, v.badDomains = map[string]DomainRecord{}, map[string]bool{}
	}
	rest, ok := strings.CutPrefix(key, v.Keys.Root())
	if !ok {
		return nil
	}
	switch {
	case rest == "budget":
		if value == nil {
			v.HasBudget = false
			return nil
		}
		b, err := ParseBudget(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Budget, v.HasBudget = b, true
	case rest == "state":
		if value == nil {
			return nil
		}
		s, err := ParseState(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.State = s
	case strings.HasPrefix(rest, "nodes/"):
		name := strings.TrimPrefix(rest, "nodes/")
		if value == nil {
			delete(v.Nodes, name)
			return nil
		}
		n, err := ParseNode(value)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Nodes[name] = n
	case strings.HasPrefix(rest, "domains/"):
		return v.applyDomain(key, strings.TrimPrefix(rest, "domains/"), value)
	case strings.HasPrefix(rest, "grants/"):
		name := strings.TrimPrefix(rest, "grants/")
		if value == nil {
			// Members ignore deletions: a live node keeps running at the grant it had, so
			// only a gone node's grant (drained) is dropped.
			if _, live := v.Nodes[name]; !live {
				delete(v.Grants, name)
			}
			delete(v.unread, name)
			return nil
		}
		g, err := ParseGrant(value)
		if err != nil {
			if _, ok := v.Grants[name]; !ok {
				v.unread[name] = true
			}
			return fmt.Errorf("%s: %w", key, err)
		}
		v.Grants[name] = g
		delete(v.unread, name)
	}
	return nil
}

// Load reads every record of the group at one revision. Malformed records are skipped and
// returned as errors. Loaded into a view that already holds values (a reload), it drops what is
// gone but keeps the last good value of a record that is malformed now.
func (v *View) Load(ctx context.Context, c *clientv3.Client) ([]error, error) {
	resp, err := c.Get(ctx, v.Keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading group %s: %w", v.Keys.Group, err)
	}
	var bad []error
	present := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		present[string(kv.Key)] = true
		if err := v.Apply(string(kv.Key), kv.Value); err != nil {
			bad = append(bad, err)
		}
	}
	if !present[v.Keys.Budget()] {
		v.HasBudget = false
	}
	for name := range v.Nodes {
		if !present[v.Keys.Node(name)] {
			delete(v.Nodes, name)
		}
	}
	for name := range v.Grants {
		if _, live := v.Nodes[name]; !live && !present[v.Keys.Grant(name)] {
			delete(v.Grants, name)
		}
	}
	for name := range v.unread {
		if !present[v.Keys.Grant(name)] {
			delete(v.unread, name)
		}
	}
	for rel := range v.Domains {
		if !present[v.Keys.Domain(rel)] {
			delete(v.Domains, rel)
			v.DomainsChanged++
		}
	}
	for rel := range v.badDomains {
		if !present[v.Keys.Domain(rel)] {
			delete(v.badDomains, rel)
			v.DomainsChanged++
		}
	}
	v.Revision = resp.Header.Revision
	return bad, nil
}

// Generation is the highest generation the view knows.
func (v *View) Generation() int64 {
	g := v.State.Generation
	for _, gr := range v.Grants {
		g = max(g, gr.Generation)
	}
	return g
}

// Held is what a live node may be running at now, never below its minimum (the controller does
// not set GPUs lower): its minimum before any grant, its grant once acknowledged, the higher of
// the old and new grant while a change is unacknowledged. A grant for another lease (the node registered again) still counts
// in full: the node runs at it until its next control period and acknowledges nothing until
// granted for its new lease.
func Held(n NodeRecord, g GrantRecord, hasGrant bool) float64 {
	switch {
	case !hasGrant:
		return n.MinW
	case g.Lease == n.Lease && n.AckedGen >= g.Generation:
		return math.Max(g.Watts, n.MinW)
	}
	return max(g.Watts, g.PrevW, n.MinW)
}

// held is Held for live node name of the view; a node whose grant was never read may run at
// anything up to its maximum.
func (v *View) held(name string, n NodeRecord) float64 {
	g, has := v.Grants[name]
	if !has && v.unread[name] {
		return n.MaxW
	}
	return Held(n, g, has)
}

// applyDomain folds one domain record into the view. A key that is not a domain path (an empty
// or "." segment, too deep) names no domain and is refused like a malformed record.
func (v *View) applyDomain(key, rel string, value []byte) error {
	if rel == "" {
		return fmt.Errorf("%s: not a domain path below group %s: empty", key, v.Keys.Group)
	}
	if err := validRel(rel); err != nil {
		return fmt.Errorf("%s: not a domain path below group %s: %w", key, v.Keys.Group, err)
	}
	v.DomainsChanged++
	if value == nil {
		delete(v.Domains, rel)
		delete(v.badDomains, rel)
		return nil
	}
	d, err := ParseDomain(value)
	if err != nil {
		if _, ok := v.Domains[rel]; !ok {
			v.badDomains[rel] = true
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	v.Domains[rel] = d
	delete(v.badDomains, rel)
	return nil
}
