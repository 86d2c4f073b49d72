package capping

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping/budget"
)

// grantSource is a cluster-like budget source: generations, acknowledgements and a floor kept
// for the node once it leaves.
type grantSource struct {
	staticSource
	floor float64
	mu    sync.Mutex
	acks  []budget.Budget
}

func (g *grantSource) grant(w float64, gen int64) {
	g.mu.Lock()
	g.b.Watts, g.b.Generation, g.b.Source, g.ok = w, gen, "etcd", true
	g.mu.Unlock()
}

func (g *grantSource) Applied(b budget.Budget) {
	g.mu.Lock()
	g.acks = append(g.acks, b)
	g.mu.Unlock()
}

func (g *grantSource) LeaveWatts() float64 { return g.floor }

// lastAck returns the last acknowledged generation (0: none).
func (g *grantSource) lastAck() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.acks) == 0 {
		return 0
	}
	return g.acks[len(g.acks)-1].Generation
}

// rigWithGrants starts a controller of 4 simulated H100s (200–700 W each) on src, through lib
// (on the rig's fleet) when not nil.
func rigWithGrants(t *testing.T, src *grantSource, lib *refusingLib, edit func(*Settings)) *rig {
	t.Helper()
	r := newRig(t, "steady", 4, 2000, edit)
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.set.StateFile); err != nil {
		t.Fatal(err)
	}
	var nv nvml.Interface = r.fleet
	if lib != nil {
		lib.Fleet, nv = r.fleet, lib
	}
	r.startOn(nv, src)
	return r
}

// A grant is acknowledged only once the limits are within it: not while a GPU refuses the
// decrease, not while power readings are lost and nothing is written, and at once when the
// limits were written.
func TestGrantAcknowledgedOnlyWhenApplied(t *testing.T) {
	src := &grantSource{floor: 800}
	src.grant(2400, 1)
	lib := &refusingLib{refuse: -1, ret: nvml.ERROR_NO_PERMISSION}
	r := rigWithGrants(t, src, lib, nil)
	r.run(10 * time.Second)
	if got := src.lastAck(); got != 1 {
		t.Fatalf("generation 1 (2400 W, 4 × 700 W GPUs) acknowledged as %d, want 1", got)
	}

	// A cut to 1000 W that GPU 2 refuses: Σ limits stay above what the grant allows.
	lib.refuse = 2
	src.grant(1000, 2)
	r.run(5 * time.Second)
	if got := src.lastAck(); got != 1 {
		t.Errorf("cut acknowledged (generation %d) while GPU 2 refuses it; limits %v", got, r.requested())
	}
	lib.refuse = -1
	r.step()
	if got := src.lastAck(); got != 2 {
		t.Errorf("cut not acknowledged once written: last generation %d, limits %v", got, r.requested())
	}
	if s := sum(r.requested()); s > 1000*(1+r.set.Oversubscription) {
		t.Errorf("acknowledged limits sum to %.0f W over 1000 W", s)
	}

	// Readings lost on one GPU: the controller writes nothing until failsafe, so no ack.
	r.fleet.SetLost(1, true)
	src.grant(900, 3)
	for k := 1; k < r.set.LostPeriods; k++ {
		r.step()
		if got := src.lastAck(); got != 2 {
			t.Fatalf("generation %d acknowledged after %d period(s) without readings and no write", got, k)
		}
	}
	r.step() // failsafe writes 900/4 W per GPU
	if got := src.lastAck(); got != 3 {
		t.Errorf("failsafe caps within the grant not acknowledged: last generation %d, limits %v", got, r.requested())
	}
}

// In a cluster group, restoring the originals on exit (or after a crash) stops at the node's
// floor, the only watts its group keeps for it once it left; the originals stay in the state
// file for the next start.
func TestRestoreStaysWithinTheGroupFloor(t *testing.T) {
	src := &grantSource{floor: 1200}
	src.grant(2000, 1)
	r := rigWithGrants(t, src, nil, nil)
	r.run(10 * time.Second)
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	limits := r.requested()
	if s := sum(limits); s > 1200 {
		t.Errorf("limits after exit %v sum to %.0f W over the floor of 1200 W", limits, s)
	}
	for i, l := range limits {
		if l < 200 || l > 700 {
			t.Errorf("GPU %d limit %v W outside its 200–700 W constraints", i, l)
		}
	}
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil || !st.Clean || st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Fatalf("state file after a partial restore %+v, %v: want it clean with the 700 W originals", st, err)
	}

	// A crash, then after-crash restore: again no further than the floor.
	r.c = r.newControllerWith(src)
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	r.run(5 * time.Second)
	r.die()
	r.c = r.newControllerWith(src) // the previous one died without Stop
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	if s := sum(r.requested()); s > 1200 {
		t.Errorf("after-crash restore set limits %v summing to %.0f W over the floor", r.requested(), s)
	}

	// A floor above the originals' sum restores them all and removes the state file.
	src.floor = 5000
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v W, want its original 700 W", i, l)
		}
	}
	if _, err := os.Stat(r.set.StateFile); !os.IsNotExist(err) {
		t.Errorf("state file kept after a complete restore: %v", err)
	}
}
