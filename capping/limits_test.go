package capping

import (
	"os"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
)

// oddMinLib reports every GPU's minimum limit as 256.001 W, not a whole watt, as some boards do,
// and refuses writes below it as NVML does. (256001 mW is one of the values a round trip through
// float watts turns into 256000.)
type oddMinLib struct {
	*sim.Fleet
	refused int
}

const oddMinMW = 256_001

type oddMinDev struct {
	*sim.GPU
	lib *oddMinLib
}

func (l *oddMinLib) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	d, ret := l.Fleet.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return d, ret
	}
	return &oddMinDev{GPU: d.(*sim.GPU), lib: l}, nvml.SUCCESS
}

func (d *oddMinDev) GetPowerManagementLimitConstraints() (uint32, uint32, nvml.Return) {
	_, hi, ret := d.GPU.GetPowerManagementLimitConstraints()
	return oddMinMW, hi, ret
}

func (d *oddMinDev) SetPowerManagementLimit(mw uint32) nvml.Return {
	lo, _, _ := d.GetPowerManagementLimitConstraints()
	if mw < lo {
		d.lib.refused++
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GPU.SetPowerManagementLimit(mw)
}

// A minimum that is not a whole watt is written as it is: a budget that puts every GPU at its
// minimum gets no write below it, so none is refused.
func TestOddMilliwattMinimumIsWrittenExactly(t *testing.T) {
	r := newRig(t, "steady", 4, 2000, nil)
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(r.set.StateFile); err != nil {
		t.Fatal(err)
	}
	lib := &oddMinLib{Fleet: r.fleet}
	r.src.set(900) // below 4 × 256.001 W: every GPU at its minimum
	r.startOn(lib, r.src)
	r.run(10 * time.Second)
	if lib.refused != 0 {
		t.Errorf("%d writes below the %d mW minimum were refused", lib.refused, oddMinMW)
	}
	for i := range 4 {
		if mw, _ := r.fleet.GPU(i).GetPowerManagementLimit(); mw != oddMinMW {
			t.Errorf("GPU %d limit %d mW, want its %d mW minimum", i, mw, oddMinMW)
		}
	}
}

// A GPU lost before the agent starts is left out of capping; the others are capped, and the
// lost GPU's original limit, saved by an earlier run, stays in the state file through a
// restore on exit.
func TestLostGPUAtStartIsLeftOutAndItsOriginalKept(t *testing.T) {
	r := newRig(t, "steady", 4, 1600, nil)
	r.run(5 * time.Second)
	// The agent dies (no Stop); GPU 1 falls off the bus before the next start.
	r.fleet.SetLost(1, true)
	r.die()
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatalf("a lost GPU stopped capping of the others: %v", err)
	}
	if len(r.c.gpus) != 3 {
		t.Fatalf("controller manages %d GPUs, want the 3 that answer", len(r.c.gpus))
	}
	r.run(10 * time.Second)
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil || len(st.GPUs) != 4 {
		t.Fatalf("state file %+v, %v: want the originals of all 4 GPUs", st, err)
	}
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	st, err = ReadState(r.set.StateFile)
	if err != nil || st == nil || !st.Clean || len(st.GPUs) != 4 {
		t.Fatalf("after a restore the state file is %+v, %v: want it clean, keeping the lost GPU's original", st, err)
	}
	for i, l := range r.requested() {
		if i != 1 && l != 700 {
			t.Errorf("GPU %d limit %v W after restore, want 700", i, l)
		}
	}
}

// A restore on exit that a GPU refuses keeps the state file as it was (not clean), so the next
// start finds the originals and restores them.
func TestRefusedRestoreKeepsTheStateFile(t *testing.T) {
	r := newRig(t, "steady", 4, 1600, nil)
	r.run(10 * time.Second)
	lib := &refusingLib{Fleet: r.fleet, refuse: -1, ret: nvml.ERROR_NO_PERMISSION}
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	r.startOn(lib, r.src)
	r.run(5 * time.Second)
	lib.refuse = 2
	if err := r.c.Stop(ExitConfigured); err == nil {
		t.Fatal("a refused restore reported no error")
	}
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil || st.Clean || st.GPUs[2].OriginalMilliwatts != 700_000 {
		t.Fatalf("state file after a refused restore %+v, %v: want it kept, not clean, with the originals", st, err)
	}
}
