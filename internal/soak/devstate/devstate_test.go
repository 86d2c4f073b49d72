package devstate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A file as the sim writes it (the contract's example), two H100s on one node.
const twoGPUs = `{"version":1,"pid":1234,"written_at":"2026-12-06T05:00:00.123456789Z","seq":42,
 "gpus":[{"index":0,"uuid":"GPU-a","model":"H100","min_mw":200000,"max_mw":700000,"default_mw":700000,
          "limit_mw":450000,"enforced_mw":450000,"power_mw":431000,"present":true,
          "limit_set_at":"2026-12-06T04:59:59Z","limit_writer":"nvml"},
         {"index":1,"uuid":"GPU-b","model":"H100","min_mw":200000,"max_mw":700000,"default_mw":700000,
          "limit_mw":%LIMIT%,"enforced_mw":%LIMIT%,"power_mw":300000,"present":true,
          "limit_set_at":"2026-12-06T04:59:59Z","limit_writer":"nvml"}]}`

func state(t *testing.T, limitMW string) *State {
	t.Helper()
	s, err := Parse("test", []byte(strings.ReplaceAll(twoGPUs, "%LIMIT%", limitMW)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReadContractExample(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(twoGPUs, "%LIMIT%", "250000")), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != 1234 || s.Seq != 42 || len(s.GPUs) != 2 || s.GPUs[0].LimitWriter != "nvml" {
		t.Fatalf("read %+v", s)
	}
	if s.SumEnforcedW() != 700 || s.SumPowerW() != 731 || s.SumMinW() != 400 {
		t.Errorf("sums %v %v %v, want 700 731 400", s.SumEnforcedW(), s.SumPowerW(), s.SumMinW())
	}
	if p := s.OutOfConstraints(); p != nil {
		t.Errorf("in-range limits reported: %v", p)
	}
}

func TestReadRejects(t *testing.T) {
	for name, raw := range map[string]string{
		"not json":      `{"version":1,`,
		"other version": `{"version":2,"gpus":[]}`,
		"no uuid":       `{"version":1,"gpus":[{"min_mw":1,"max_mw":2}]}`,
		"no range":      `{"version":1,"gpus":[{"uuid":"x","min_mw":5,"max_mw":2}]}`,
	} {
		if _, err := Parse("f.json", []byte(raw)); err == nil || !strings.Contains(err.Error(), "f.json") {
			t.Errorf("%s: error %v, want one naming the file", name, err)
		}
	}
	if _, err := Read(filepath.Join(t.TempDir(), "absent")); err == nil || !strings.Contains(err.Error(), ErrNoFile.Error()) {
		t.Errorf("missing file: %v", err)
	}
}

func TestOutOfConstraints(t *testing.T) {
	for _, limit := range []string{"199999", "700001", "4294967295"} {
		if p := state(t, limit).OutOfConstraints(); len(p) == 0 || !strings.Contains(p[0], "GPU 1") {
			t.Errorf("limit %s mW: %v, want GPU 1 reported", limit, p)
		}
	}
	s := state(t, "100")
	s.GPUs[1].Present = false // a lost GPU answers nothing; its stale numbers are not checked
	if p := s.OutOfConstraints(); p != nil {
		t.Errorf("absent GPU reported: %v", p)
	}
}

func TestBudgetInvariant(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	c := NewChecker(3*time.Second, at(0))
	c.SetBudget(at(0), 1000, 0)
	round := func(s float64, limit string) {
		c.Round(at(s), map[string]*State{"n1": state(t, limit)})
	}
	round(1, "500000") // 950 W ≤ 1000 W
	c.SetBudget(at(10), 800, 0)
	round(11, "500000") // 950 W within the cut's settle window: checked against 1000 W
	round(12.9, "500000")
	if n := c.Counts()[KindBudget]; n != 0 {
		t.Fatalf("%d violations inside the settle window: %v", n, c.Violations())
	}
	round(13.5, "500000") // past the window: 950 W > 800 W
	round(14, "500000")   // same episode
	round(15, "340000")   // 790 W: back within
	round(16, "500000")   // a second episode
	if n := c.Counts()[KindBudget]; n != 2 {
		t.Fatalf("%d over-budget episodes, want 2: %v", n, c.Violations())
	}
	c.Excuse("n1", at(20), at(21))
	round(20.5, "700000")
	round(23.9, "700000") // still within until + settle
	if n := c.Counts()[KindBudget]; n != 2 || c.ExcusedRounds() != 2 {
		t.Fatalf("excused rounds counted: %d violations, %d excused", n, c.ExcusedRounds())
	}
	// The other nodes stay checked while one is excused: within the budget less its floor.
	c.Excuse("n2", at(25), at(26))
	two := func(s float64, l1 string) {
		c.Round(at(s), map[string]*State{"n1": state(t, l1), "n2": state(t, "700000")})
	}
	two(25.5, "340000") // n1 790 W > 800 W less n2's Σ minimums 400 W
	if n := c.Counts()[KindBudget]; n != 3 {
		t.Fatalf("a node over the budget left by an excused one passed: %v", c.Violations())
	}
	// A budget below the GPUs' minimums cannot be held: the minimums are the bound.
	c.SetBudget(at(30), 100, 0)
	low := state(t, "200000")
	low.GPUs[0].LimitMW, low.GPUs[0].EnforcedMW = 200000, 200000
	c.Round(at(40), map[string]*State{"n1": low})
	if n := c.Counts()[KindBudget]; n != 3 {
		t.Errorf("Σ at the minimums counted as over a budget below them: %v", c.Violations())
	}
	round(42, "150000")
	if n := c.Counts()[KindConstraints]; n != 1 {
		t.Errorf("%d constraint violations, want 1 (150 W < 200 W)", n)
	}
	// The allocator grants every node the budget's floor per node, also above its minimums.
	c.SetBudget(at(50), 100, 500)
	round(60, "40000") // 450 + 40 W: within the 500 W floor (GPU b below its minimum aside)
	before := c.Counts()[KindBudget]
	round(61, "70000") // 520 W: above the floor
	if n := c.Counts()[KindBudget]; n != before+1 {
		t.Errorf("Σ above the node's floor under a budget below it: %d violations, want %d", n, before+1)
	}
}

func TestCheckExit(t *testing.T) {
	orig := map[string]int64{"GPU-a": 700000, "GPU-b": 700000}
	capped := state(t, "300000")
	restored := state(t, "700000")
	restored.GPUs[0].LimitMW = 700000
	if why := CheckExit("restore", orig, capped, restored, -1); why != "" {
		t.Errorf("full restore: %s", why)
	}
	if why := CheckExit("restore", orig, capped, capped, -1); why == "" {
		t.Error("nothing restored without a cluster budget passed")
	}
	// With a cluster budget the node keeps 440 W once it left: each GPU gets its minimum
	// (200 W) plus the same share of the way to its original: 220 W.
	atFloor := state(t, "220000")
	atFloor.GPUs[0].LimitMW = 220000
	if why := CheckExit("restore", orig, capped, atFloor, 440); why != "" {
		t.Errorf("restore within the node's floor: %s", why)
	}
	if why := CheckExit("restore", orig, capped, restored, 440); why == "" {
		t.Error("a restore beyond the node's floor passed")
	}
	// A node that does not know its group's floor restores within its own minimums.
	atMin := state(t, "200000")
	atMin.GPUs[0].LimitMW = 200000
	if why := CheckExit("restore", orig, capped, atMin, 440); why != "" {
		t.Errorf("restore within the node's minimums: %s", why)
	}
	if why := CheckExit("restore", orig, capped, atMin, -1); why == "" {
		t.Error("minimums passed for a restore without a cluster budget")
	}
	// Any budget between the minimums and the floor gives the same shape: 213 W each is
	// within 852 W.
	between := state(t, "213000")
	between.GPUs[0].LimitMW = 213000
	if why := CheckExit("restore", orig, capped, between, 880); why != "" {
		t.Errorf("restore within a budget below the floor: %s", why)
	}
	uneven := state(t, "213000")
	uneven.GPUs[0].LimitMW = 260000
	if why := CheckExit("restore", orig, capped, uneven, 880); why == "" {
		t.Error("GPUs restored by different fractions passed")
	}
	// Originals that fit the floor all come back.
	if why := CheckExit("restore", orig, capped, restored, 1400); why != "" {
		t.Errorf("restore within a floor that fits the originals: %s", why)
	}
	if why := CheckExit("keep", orig, capped, capped, 440); why != "" {
		t.Errorf("keep: %s", why)
	}
	if why := CheckExit("keep", orig, capped, restored, 440); why == "" {
		t.Error("keep that restored passed")
	}
	if why := CheckExit("restore", orig, capped, nil, 0); why == "" {
		t.Error("no state after exit passed")
	}
}

func TestRestoreTargetOnOtherModels(t *testing.T) {
	// A100s (100–400 W) restored within 500 W from originals of 400 and 250 W: Σ min 200 W,
	// Σ originals 650 W, so each GPU gets its minimum plus two thirds of the way.
	s := &State{Version: 1, GPUs: []GPU{
		{Index: 0, UUID: "a", MinMW: 100000, MaxMW: 400000, Present: true},
		{Index: 1, UUID: "b", MinMW: 100000, MaxMW: 400000, Present: true},
	}}
	got := RestoreTarget(map[string]int64{"a": 400000, "b": 250000}, s, 500)
	if got["a"] != 300000 || got["b"] != 200000 {
		t.Errorf("targets %v, want a 300 W and b 200 W", got)
	}
}

func TestClassifySuccessor(t *testing.T) {
	orig := map[string]int64{"GPU-a": 700000, "GPU-b": 700000}
	crashed := state(t, "300000") // 450 + 300 W
	restored := state(t, "700000")
	restored.GPUs[0].LimitMW = 700000
	if got := ClassifySuccessor(orig, crashed, []*State{crashed, restored}, -1); got != SuccessorRestored {
		t.Errorf("restored run classified %s", got)
	}
	if got := ClassifySuccessor(orig, crashed, []*State{crashed, crashed}, -1); got != SuccessorAdopted {
		t.Errorf("held limits classified %s", got)
	}
	step := state(t, "350000") // the loop's own step is neither
	if got := ClassifySuccessor(orig, crashed, []*State{step}, -1); got != SuccessorOther {
		t.Errorf("a loop step classified %s", got)
	}
	if got := ClassifySuccessor(orig, restored, []*State{restored}, -1); got != SuccessorSame {
		t.Errorf("limits already at the originals classified %s", got)
	}
	// With a cluster budget, every GPU at its minimum is what a restore within the node's own
	// minimums and a first period without a grant both write.
	atMin := state(t, "200000")
	atMin.GPUs[0].LimitMW = 200000
	if got := ClassifySuccessor(orig, crashed, []*State{atMin}, 880); got != SuccessorSame {
		t.Errorf("minimums classified %s", got)
	}
	// A restore within the floor raises the lower GPU: 200 + (880−400)/1000 × 500 = 440 W each.
	toFloor := state(t, "440000")
	toFloor.GPUs[0].LimitMW = 440000
	if got := ClassifySuccessor(orig, crashed, []*State{toFloor}, 880); got != SuccessorRestored {
		t.Errorf("a restore within the floor classified %s", got)
	}
}

// A node with its own budget is checked against it, not against the group's, and its GPUs
// leave the group's Σ; a budget of its own below its GPUs' minimums binds at the minimums.
func TestNodeBudgetInvariant(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	c := NewChecker(3*time.Second, at(0))
	c.SetBudget(at(0), 1000, 0)
	c.SetNodeBudget("file", at(0), 800, 0)
	round := func(s float64, group, own string) {
		c.Round(at(s), map[string]*State{"etcd": state(t, group), "file": state(t, own)})
	}
	round(1, "500000", "300000") // group 950 W ≤ 1000 W; own 750 W ≤ 800 W: together above both
	if n := c.Counts()[KindBudget]; n != 0 {
		t.Fatalf("the node with its own budget counted in the group's Σ: %v", c.Violations())
	}
	round(2, "500000", "400000") // own 850 W > 800 W
	round(3, "500000", "400000") // the same episode
	if n := c.Counts()[KindBudget]; n != 1 || c.Violations()[0].Node != "file" {
		t.Fatalf("own budget exceeded: %d violations %v, want 1 on node file", n, c.Violations())
	}
	c.SetNodeBudget("file", at(10), 300, 0) // below the GPUs' Σ minimums (400 W)
	round(11, "500000", "300000")           // within the settle window: 800 W binds
	low := state(t, "200000")
	low.GPUs[0].LimitMW, low.GPUs[0].EnforcedMW = 200000, 200000
	c.Round(at(14), map[string]*State{"file": low}) // at the minimums: within
	if n := c.Counts()[KindBudget]; n != 1 {
		t.Fatalf("a node at its minimums under a budget below them: %v", c.Violations())
	}
	round(15, "500000", "300000") // 750 W > max(300, 400) W
	if n := c.Counts()[KindBudget]; n != 2 {
		t.Fatalf("above the minimums under a budget below them: %d violations, want 2", n)
	}
	c.Excuse("file", at(20), at(21))
	round(22, "500000", "700000")
	if n := c.Counts()[KindBudget]; n != 2 {
		t.Errorf("an excused node with its own budget checked: %v", c.Violations())
	}
	// The caps may sum above the budget by the oversubscription share (1000 W + 5 %).
	c.SetNodeBudget("file", at(30), 1000, 0.05)
	round(40, "500000", "600000") // 1050 W
	if n := c.Counts()[KindBudget]; n != 2 {
		t.Errorf("Σ within the oversubscription counted over: %v", c.Violations())
	}
	round(41, "500000", "610000") // 1060 W
	if n := c.Counts()[KindBudget]; n != 3 {
		t.Errorf("Σ above the oversubscription: %d violations, want 3", n)
	}
}
