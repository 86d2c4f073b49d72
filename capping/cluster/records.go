// Package cluster shares a group power budget among the nodes of a group through etcd. etcd holds
// the state and does the coordination: nodes register under leases, one node is elected
// allocator with concurrency.Election, grants are published in transactions and read through
// watches. Package budget wraps a Member as the etcd budget source; capstanctl reads and writes
// the same records.
package cluster

import (
	"encoding/json"
	"fmt"
	"math"
	"path"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/config"
)

// MaxWatts bounds every wattage a record may hold; above it a value is taken as garbage.
const MaxWatts = 1e9

// Keys locates a group's records under a prefix (default /capstan/v1).
type Keys struct {
	Prefix string
	Group  string
}

// Root is the group's directory; every record of the group is below it.
func (k Keys) Root() string { return path.Join(k.Prefix, "groups", k.Group) + "/" }

// Budget is the key of the group budget.
func (k Keys) Budget() string { return k.Root() + "budget" }

// History is the directory of past budgets, one key per change.
func (k Keys) History() string { return k.Root() + "history/" }

// HistoryKey names one budget change; the zero-padded time sorts keys in order.
func (k Keys) HistoryKey(at time.Time) string {
	return fmt.Sprintf("%s%020d", k.History(), at.UnixNano())
}

// Nodes is the directory of node registrations, each bound to its node's lease.
func (k Keys) Nodes() string { return k.Root() + "nodes/" }

// Node is one node's registration.
func (k Keys) Node(name string) string { return k.Nodes() + name }

// Grants is the directory of grants the allocator writes.
func (k Keys) Grants() string { return k.Root() + "grants/" }

// Grant is one node's grant.
func (k Keys) Grant(name string) string { return k.Grants() + name }

// State is the allocator's record: generation and who allocates.
func (k Keys) State() string { return k.Root() + "state" }

// Election is the prefix concurrency.Election campaigns under.
func (k Keys) Election() string { return k.Root() + "election" }

// ValidName reports whether s may be a group or node name: it becomes one path segment.
func ValidName(s string) error { return config.ValidName(s) }

// BudgetRecord is the group budget an SRE set, with who, when and why.
type BudgetRecord struct {
	Watts float64 `json:"watts"`
	// FloorPerNodeW is the least a node is granted and what a node cut off from etcd drops to
	// (never below its own minimum).
	FloorPerNodeW float64   `json:"floor_per_node_w"`
	SetBy         string    `json:"set_by"`
	SetAt         time.Time `json:"set_at"`
	Reason        string    `json:"reason,omitempty"`
}

// NodeRecord is what a node reports under its lease.
type NodeRecord struct {
	DemandW  float64 `json:"demand_w"`
	MinW     float64 `json:"min_w"`
	MaxW     float64 `json:"max_w"`
	Priority float64 `json:"priority"`
	AppliedW float64 `json:"applied_w"`
	// AckedGen is the generation of the grant the node applies now.
	AckedGen int64 `json:"acked_gen"`
	// Lease is the node's lease, so that a grant can say which registration it was for.
	Lease     int64     `json:"lease"`
	UpdatedAt time.Time `json:"updated_at"`
	// Domain is the path below the group of the domain the node attaches to; empty (left
	// out) for the group's root, so a flat group's records read as they always did.
	Domain string `json:"domain,omitempty"`
	// DrawW is the node's measured draw when the record was written (left out before a first
	// measurement): what the domains' Σ draw adds up.
	DrawW float64 `json:"draw_w,omitempty"`
}

// GrantRecord is what the allocator granted a node.
type GrantRecord struct {
	Watts float64 `json:"watts"`
	// PrevW is the grant this one replaced: until the node acknowledges, it may still run at it.
	PrevW      float64   `json:"prev_w"`
	MinW       float64   `json:"min_w"`
	Generation int64     `json:"generation"`
	Lease      int64     `json:"lease"`
	At         time.Time `json:"at"`
	// Domain is the domain (path below the group) the grant counts in; PrevDomain the one of
	// the grant it replaced, where the node runs until it acknowledges. Empty: the root.
	Domain     string `json:"domain,omitempty"`
	PrevDomain string `json:"prev_domain,omitempty"`
}

// StateRecord is the allocator's last publication.
type StateRecord struct {
	Generation int64     `json:"generation"`
	Allocator  string    `json:"allocator"`
	At         time.Time `json:"at"`
}

func watts(name string, v float64) error {
	if math.IsNaN(v) || v < 0 || v >= MaxWatts {
		return fmt.Errorf("%s %v out of range (allowed: 0 to %g)", name, v, MaxWatts)
	}
	return nil
}

// decode parses strictly: unknown fields are refused, so a record from a newer or foreign writer
// is seen as such rather than half-read.
func decode(data []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the record")
	}
	return nil
}

// ParseBudget reads and checks a budget record.
func ParseBudget(data []byte) (BudgetRecord, error) {
	var r BudgetRecord
	if err := decode(data, &r); err != nil {
		return r, fmt.Errorf("budget record: %w", err)
	}
	if r.Watts <= 0 || watts("watts", r.Watts) != nil {
		return r, fmt.Errorf("budget record: watts %v out of range (allowed: above 0, below %g)", r.Watts, MaxWatts)
	}
	if err := watts("floor_per_node_w", r.FloorPerNodeW); err != nil {
		return r, fmt.Errorf("budget record: %w", err)
	}
	return r, nil
}

// ParseNode reads and checks a node record.
func ParseNode(data []byte) (NodeRecord, error) {
	var r NodeRecord
	if err := decode(data, &r); err != nil {
		return r, fmt.Errorf("node record: %w", err)
	}
	for _, f := range []struct {
		n string
		v float64
	}{{"demand_w", r.DemandW}, {"min_w", r.MinW}, {"max_w", r.MaxW}, {"applied_w", r.AppliedW}, {"draw_w", r.DrawW}} {
		if err := watts(f.n, f.v); err != nil {
			return r, fmt.Errorf("node record: %w", err)
		}
	}
	if r.MaxW < r.MinW {
		return r, fmt.Errorf("node record: max_w %v below min_w %v", r.MaxW, r.MinW)
	}
	if math.IsNaN(r.Priority) || r.Priority < 1 || r.Priority > 1000 {
		return r, fmt.Errorf("node record: priority %v out of range (allowed: 1 to 1000)", r.Priority)
	}
	if err := validRel(r.Domain); err != nil {
		return r, fmt.Errorf("node record: domain %q: %w", r.Domain, err)
	}
	return r, nil
}

// ParseGrant reads and checks a grant record.
func ParseGrant(data []byte) (GrantRecord, error) {
	var r GrantRecord
	if err := decode(data, &r); err != nil {
		return r, fmt.Errorf("grant record: %w", err)
	}
	for _, f := range []struct {
		n string
		v float64
	}{{"watts", r.Watts}, {"prev_w", r.PrevW}, {"min_w", r.MinW}} {
		if err := watts(f.n, f.v); err != nil {
			return r, fmt.Errorf("grant record: %w", err)
		}
	}
	if r.Generation < 1 {
		return r, fmt.Errorf("grant record: generation %d out of range (allowed: 1 and up)", r.Generation)
	}
	for _, d := range []string{r.Domain, r.PrevDomain} {
		if err := validRel(d); err != nil {
			return r, fmt.Errorf("grant record: domain %q: %w", d, err)
		}
	}
	return r, nil
}

// ParseState reads and checks the allocator's state record.
func ParseState(data []byte) (StateRecord, error) {
	var r StateRecord
	if err := decode(data, &r); err != nil {
		return r, fmt.Errorf("state record: %w", err)
	}
	if r.Generation < 0 {
		return r, fmt.Errorf("state record: generation %d out of range", r.Generation)
	}
	return r, nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs of numbers, strings and times are marshalled
	}
	return string(b)
}
