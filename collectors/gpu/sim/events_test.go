package sim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// TestEventSetDeliversXIDs checks injected XIDs reach the event set of the GPUs registered with
// it, in order, and that Wait times out when there is nothing to read.
func TestEventSetDeliversXIDs(t *testing.T) {
	f, _ := newFleet(t, "H100", "steady", 3)
	set, ret := f.EventSetCreate()
	mustOK(t, "EventSetCreate", ret)
	for i := range 2 { // GPU 2 stays unregistered
		d, _ := f.DeviceGetHandleByIndex(i)
		mustOK(t, "RegisterEvents", d.RegisterEvents(nvml.EventTypeXidCriticalError, set))
	}
	if _, ret := set.Wait(0); ret != nvml.ERROR_TIMEOUT {
		t.Fatalf("Wait(0) on an empty set = %v, want ERROR_TIMEOUT", ret)
	}
	if _, ret := set.Wait(20); ret != nvml.ERROR_TIMEOUT {
		t.Fatalf("Wait(20) on an empty set = %v, want ERROR_TIMEOUT", ret)
	}

	f.InjectXID(1, 79)
	f.InjectXID(2, 48) // not registered: not delivered
	f.InjectXID(0, 13)
	want := []struct {
		gpu int
		xid uint64
	}{{1, 79}, {0, 13}}
	for _, w := range want {
		ev, ret := f.EventSetWait(set, 0)
		mustOK(t, "EventSetWait", ret)
		d, _ := f.DeviceGetHandleByIndex(w.gpu)
		if ev.Device != d || ev.EventType != nvml.EventTypeXidCriticalError || ev.EventData != w.xid {
			t.Errorf("event %+v, want XID %d on GPU %d", ev, w.xid, w.gpu)
		}
	}
	if _, ret := set.Wait(0); ret != nvml.ERROR_TIMEOUT {
		t.Errorf("Wait after draining = %v, want ERROR_TIMEOUT", ret)
	}

	// A waiter blocked in Wait wakes for an XID raised meanwhile.
	got := make(chan nvml.EventData, 1)
	go func() {
		ev, _ := set.Wait(60_000)
		got <- ev
	}()
	f.InjectXID(0, 94)
	if ev := <-got; ev.EventData != 94 {
		t.Errorf("blocked waiter got %+v, want XID 94", ev)
	}

	mustOK(t, "EventSetFree", f.EventSetFree(set))
	if ret := set.Free(); ret != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("second Free = %v, want ERROR_INVALID_ARGUMENT", ret)
	}
	f.InjectXID(0, 13) // a freed set receives nothing, and injecting does not fail
	if _, ret := set.Wait(0); ret != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("Wait on a freed set = %v, want ERROR_INVALID_ARGUMENT", ret)
	}
}

func TestRegisterEventsChecksItsArguments(t *testing.T) {
	f, _ := newFleet(t, "A100", "steady", 1)
	other, _ := newFleet(t, "A100", "steady", 1)
	set, _ := f.EventSetCreate()
	foreign, _ := other.EventSetCreate()
	d := f.GPU(0)
	tests := []struct {
		name  string
		types uint64
		set   nvml.EventSet
		want  nvml.Return
	}{
		{"XID", nvml.EventTypeXidCriticalError, set, nvml.SUCCESS},
		{"everything supported", supportedEvents, set, nvml.SUCCESS},
		{"unsupported type", nvml.EventTypePowerSourceChange, set, nvml.ERROR_NOT_SUPPORTED},
		{"another fleet's set", nvml.EventTypeXidCriticalError, foreign, nvml.ERROR_INVALID_ARGUMENT},
		{"no set", nvml.EventTypeXidCriticalError, nil, nvml.ERROR_INVALID_ARGUMENT},
	}
	for _, tt := range tests {
		if ret := d.RegisterEvents(tt.types, tt.set); ret != tt.want {
			t.Errorf("%s: RegisterEvents = %v, want %v", tt.name, ret, tt.want)
		}
	}
}

// TestInjectECC checks injected ECC errors show in the counters and as events.
func TestInjectECC(t *testing.T) {
	f, _ := newFleet(t, "H200", "steady", 1)
	set, _ := f.EventSetCreate()
	d := f.GPU(0)
	mustOK(t, "RegisterEvents", d.RegisterEvents(nvml.EventTypeSingleBitEccError|nvml.EventTypeDoubleBitEccError, set))
	f.InjectECC(0, 3, 1)
	for _, tt := range []struct {
		kind nvml.MemoryErrorType
		want uint64
	}{{nvml.MEMORY_ERROR_TYPE_CORRECTED, 3}, {nvml.MEMORY_ERROR_TYPE_UNCORRECTED, 1}} {
		for _, counter := range []nvml.EccCounterType{nvml.VOLATILE_ECC, nvml.AGGREGATE_ECC} {
			if n, _ := d.GetTotalEccErrors(tt.kind, counter); n != tt.want {
				t.Errorf("ECC type %d counter %d = %d, want %d", tt.kind, counter, n, tt.want)
			}
		}
	}
	for _, want := range []uint64{nvml.EventTypeSingleBitEccError, nvml.EventTypeDoubleBitEccError} {
		if ev, ret := set.Wait(0); ret != nvml.SUCCESS || ev.EventType != want {
			t.Errorf("event %+v, %v, want type %#x", ev, ret, want)
		}
	}
}
