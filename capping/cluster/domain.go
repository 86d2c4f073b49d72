package cluster

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/config"
)

// A power domain is a node of the electrical tree (site, hall, row, rack/PDU) with a limit in
// watts. A group is the root of its tree: its budget record is the root's limit, and the
// domains below it are records under <group>/domains/<path below the group>. A path names a
// domain and its ancestors at once (site/row3/rack12 is in site/row3, in site), so the tree
// cannot hold a cycle and a parent is never ambiguous.

// DomainRecord is a domain below a group's root, as an SRE set it.
type DomainRecord struct {
	LimitW float64 `json:"limit_w"`
	// GuardBand is the share of the limit kept free (0 to 0.5): grants under the domain stay
	// within limit × (1 − guard band).
	GuardBand float64 `json:"guard_band,omitempty"`
	// Priority is the domain's weight against its sibling domains (1 to 1000; 0 reads as 1).
	Priority float64   `json:"priority,omitempty"`
	SetBy    string    `json:"set_by"`
	SetAt    time.Time `json:"set_at"`
	Reason   string    `json:"reason,omitempty"`
}

// MaxGuardBand bounds a domain's guard band: beyond half, the limit is mistyped.
const MaxGuardBand = 0.5

// ParseDomain reads and checks a domain record.
func ParseDomain(data []byte) (DomainRecord, error) {
	var r DomainRecord
	if err := decode(data, &r); err != nil {
		return r, fmt.Errorf("domain record: %w", err)
	}
	if math.IsNaN(r.LimitW) || r.LimitW <= 0 || r.LimitW >= MaxWatts {
		return r, fmt.Errorf("domain record: limit_w %v out of range (allowed: above 0, below %g)", r.LimitW, MaxWatts)
	}
	if math.IsNaN(r.GuardBand) || r.GuardBand < 0 || r.GuardBand > MaxGuardBand {
		return r, fmt.Errorf("domain record: guard_band %v out of range (allowed: 0 to %g)", r.GuardBand, MaxGuardBand)
	}
	if math.IsNaN(r.Priority) || r.Priority != 0 && (r.Priority < 1 || r.Priority > 1000) {
		return r, fmt.Errorf("domain record: priority %v out of range (allowed: 1 to 1000)", r.Priority)
	}
	return r, nil
}

// weight is the domain's priority, 1 when unset.
func (r DomainRecord) weight() float64 {
	if r.Priority == 0 {
		return 1
	}
	return r.Priority
}

// Domains is the directory of a group's domains below its root.
func (k Keys) Domains() string { return k.Root() + "domains/" }

// Domain is the record of the domain at rel, a path below the group ("" is the root, whose
// limit is the budget record).
func (k Keys) Domain(rel string) string {
	if rel == "" {
		return k.Budget()
	}
	return k.Domains() + rel
}

// ValidPath checks a domain's full path: the group, then the domains below it.
func ValidPath(p string) error { return config.ValidDomainPath(p) }

// SplitPath splits a full domain path into its group and the path below the group.
func SplitPath(p string) (group, rel string, err error) {
	if err := ValidPath(p); err != nil {
		return "", "", fmt.Errorf("domain path %q: %w", p, err)
	}
	group, rel, _ = strings.Cut(p, "/")
	return group, rel, nil
}

// FullPath joins a group and a path below it.
func FullPath(group, rel string) string {
	if rel == "" {
		return group
	}
	return group + "/" + rel
}

// parentOf is the path of rel's parent below the group ("" for the root's children).
func parentOf(rel string) string {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return ""
	}
	return rel[:i]
}

// validRel checks a path below a group as a node or grant record carries it.
func validRel(rel string) error {
	if rel == "" {
		return nil
	}
	return config.ValidDomainPath(rel)
}
