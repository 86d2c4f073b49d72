package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/capstan-power/capstan/capping/cluster"
)

// moveScript drives a groupChecker by hand, one revision at a time, with the records a move
// writes: gpu-1 in rackA at 1400 W, other in rackB at 1000 W, a2 in rackA at 500 W; rackB's
// limit 1400 W, rackA's 2000 W, the group's 3000 W.
type moveScript struct {
	t    *testing.T
	c    *groupChecker
	keys cluster.Keys
	rev  int64
}

type rec struct {
	node  string
	n     *cluster.NodeRecord
	g     *cluster.GrantRecord
	leave bool
}

func node(domain string, applied float64, acked int64, lease int64) *cluster.NodeRecord {
	return &cluster.NodeRecord{MinW: 400, MaxW: 1400, DemandW: 1400, Priority: 1, AppliedW: applied, AckedGen: acked, Lease: lease, Domain: domain}
}

func grant(domain string, w float64, prevDomain string, prevW float64, gen int64, lease int64) *cluster.GrantRecord {
	return &cluster.GrantRecord{Watts: w, PrevW: prevW, MinW: 400, Generation: gen, Lease: lease, Domain: domain, PrevDomain: prevDomain}
}

func newMoveScript(t *testing.T) *moveScript {
	s := &moveScript{t: t, keys: cluster.Keys{Prefix: "/capstan/v1", Group: "site"}}
	s.c = &groupChecker{nodes: map[string]cluster.NodeRecord{}, grants: map[string]cluster.GrantRecord{},
		limits: map[string]float64{"": 3000, "rackA": 2000, "rackB": 1400}}
	s.step(rec{node: "gpu-1", n: node("rackA", 1400, 1, 1), g: grant("rackA", 1400, "rackA", 400, 1, 1)},
		rec{node: "other", n: node("rackB", 1000, 1, 2), g: grant("rackB", 1000, "rackB", 400, 1, 2)},
		rec{node: "a2", n: node("rackA", 500, 1, 3), g: grant("rackA", 500, "rackA", 400, 1, 3)})
	s.c.expectMove("gpu-1", "rackB")
	return s
}

// step writes the records at one revision and checks it.
func (s *moveScript) step(rs ...rec) {
	s.t.Helper()
	s.rev++
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.rev = s.rev
	for _, r := range rs {
		if r.n != nil || r.leave {
			var v []byte
			if r.n != nil {
				v, _ = json.Marshal(r.n)
			}
			s.c.applyLocked(s.keys, s.keys.Node(r.node), v, r.leave)
		}
		if r.g != nil {
			v, _ := json.Marshal(r.g)
			s.c.applyLocked(s.keys, s.keys.Grant(r.node), v, false)
		}
	}
	s.c.checkLocked()
}

// problems is what the checker found: over-limit states and broken move rules.
func (s *moveScript) problems() string {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return strings.Join(append(append([]string{}, s.c.over...), s.c.broken...), "\n")
}

// The checker passes a move that keeps the documented rule, whatever order the cuts are
// acknowledged in, and catches every way of breaking it, including the ways the per-record
// count it replaced missed (a moved node's old domain, a rise before the cuts landed).
func TestGroupCheckerMoveRules(t *testing.T) {
	// The move as the allocator makes it: the node's record moves, then one round cuts the
	// moved node to 500 W in rackB and other to 500 W; the two acknowledge in either order.
	moved := func(s *moveScript) {
		s.step(rec{node: "gpu-1", n: node("rackB", 1400, 1, 1)})
		s.step(rec{node: "gpu-1", g: grant("rackB", 500, "rackA", 1400, 2, 1)}, rec{node: "other", g: grant("rackB", 500, "rackB", 1000, 2, 2)})
	}
	gpuAcks := rec{node: "gpu-1", n: node("rackB", 500, 2, 1)}
	otherAcks := rec{node: "other", n: node("rackB", 500, 2, 2)}
	for _, order := range [][]rec{{gpuAcks, otherAcks}, {otherAcks, gpuAcks}} {
		s := newMoveScript(t)
		moved(s)
		s.step(order[0])
		s.step(order[1])
		if p := s.problems(); p != "" || !s.c.settled || s.c.heldW != 1400 {
			t.Errorf("a move by the rule: settled %v, held %v W, problems:\n%s", s.c.settled, s.c.heldW, p)
		}
	}

	for _, tc := range []struct {
		name  string
		steps func(s *moveScript)
		want  string
	}{
		{"a rise once settled", func(s *moveScript) {
			moved(s)
			s.step(gpuAcks)
			s.step(otherAcks)
			s.step(rec{node: "other", g: grant("rackB", 1000, "rackB", 500, 3, 2)})
		}, `domain "rackB" at revision 6: Σ 1500 W > 1400 W allowed`},
		{"a rise beside the moved node before the cuts landed", func(s *moveScript) {
			moved(s)
			s.step(gpuAcks)
			s.step(rec{node: "other", g: grant("rackB", 1100, "rackB", 500, 3, 2)})
		}, "other in \"rackB\" may run at 1100 W, above the 1000 W it could when gpu-1 arrived"},
		{"a joiner while over", func(s *moveScript) {
			moved(s)
			s.step(rec{node: "x", n: node("rackB", 400, 0, 4)})
		}, "Σ in \"rackB\" rose from 2400 W to 2800 W while over its 1400 W limit"},
		{"a first grant above what the node held", func(s *moveScript) {
			s.step(rec{node: "gpu-1", n: node("rackA", 1200, 2, 1), g: grant("rackA", 1200, "rackA", 1400, 2, 1)})
			s.step(rec{node: "gpu-1", n: node("rackB", 1200, 2, 1)})
			s.step(rec{node: "gpu-1", g: grant("rackB", 1300, "rackA", 1200, 3, 1)})
		}, "gpu-1's grant in \"rackB\", 1300 W, is above the 1200 W it held when it moved"},
		{"the old domain raised before the moved node acknowledged", func(s *moveScript) {
			s.step(rec{node: "gpu-1", n: node("rackB", 1400, 1, 1)})
			s.step(rec{node: "a2", g: grant("rackA", 900, "rackA", 500, 2, 3)})
		}, `domain "rackA" at revision 3: Σ 2300 W > 2000 W allowed`},
		{"the move's excess beyond what the node held", func(s *moveScript) {
			s.step(rec{node: "gpu-1", n: node("rackB", 1400, 1, 1)}, rec{node: "x", n: node("rackB", 1000, 0, 4)})
		}, `domain "rackB" at revision 2: Σ 3400 W > 2800 W allowed`},
	} {
		s := newMoveScript(t)
		tc.steps(s)
		if p := s.problems(); !strings.Contains(p, tc.want) {
			t.Errorf("%s: the checker found:\n%s\nwant %q", tc.name, p, tc.want)
		}
	}
}
