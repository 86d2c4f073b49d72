package gpu

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
)

// pciTree writes a sysfs tree with the given PCI functions (vendor, class).
func pciTree(t *testing.T, devices map[string][2]string) string {
	t.Helper()
	root := t.TempDir()
	for addr, vc := range devices {
		dir := filepath.Join(root, "bus", "pci", "devices", addr)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]string{"vendor": vc[0], "class": vc[1]} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func inventoryOf(t *testing.T, c *Collector) (expected, present float64) {
	t.Helper()
	b := collect(t, c)
	expected, ok1 := b.Find(metrics.GPUsExpected)
	present, ok2 := b.Find(metrics.GPUsPresent)
	if !ok1 || !ok2 {
		t.Fatalf("no GPU counts in the collection (expected %v, present %v)", ok1, ok2)
	}
	return expected, present
}

// A GPU lost while the agent runs lowers the present count below the expected one.
func TestInventoryCountsLostGPUs(t *testing.T) {
	lib := newFakeLib(3)
	var lost atomic.Bool
	lib.gpus[2].GetPowerUsageFunc = func() (uint32, nvml.Return) {
		if lost.Load() {
			return 0, nvml.ERROR_GPU_IS_LOST
		}
		return 300_000, nvml.SUCCESS
	}
	c := mustNew(t, lib, nil, nil)
	if e, p := inventoryOf(t, c); e != 3 || p != 3 {
		t.Errorf("all GPUs answering: expected %v present %v, want 3 and 3", e, p)
	}
	lost.Store(true)
	inventoryOf(t, c)
	if e, p := inventoryOf(t, c); e != 3 || p != 2 {
		t.Errorf("GPU 2 lost: expected %v present %v, want 3 and 2", e, p)
	}
}

// A GPU on the PCI bus that NVML does not enumerate (gone before the agent started) is
// expected but not present; NVSwitches and other vendors' devices are not GPUs.
func TestInventoryExpectsTheGPUsOnThePCIBus(t *testing.T) {
	sysfs := pciTree(t, map[string][2]string{
		"0000:18:00.0": {"0x10de", "0x030200"}, // H100 (3D controller)
		"0000:2a:00.0": {"0x10de", "0x030200"},
		"0000:3a:00.0": {"0x10de", "0x030000"}, // VGA
		"0000:05:00.0": {"0x10de", "0x068000"}, // NVSwitch (bridge)
		"0000:00:01.0": {"0x8086", "0x030000"}, // another vendor's display
	})
	if n := pciGPUs(sysfs); n != 3 {
		t.Fatalf("pciGPUs = %d, want 3", n)
	}
	if n := pciGPUs(filepath.Join(sysfs, "nope")); n != 0 {
		t.Errorf("pciGPUs of a missing tree = %d, want 0", n)
	}
	c, err := New(newFakeLib(2), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.ExpectFromPCI(sysfs)
	if e, p := inventoryOf(t, c); e != 3 || p != 2 {
		t.Errorf("2 of 3 GPUs enumerated: expected %v present %v, want 3 and 2", e, p)
	}

	// The simulator's GPUs are not the host's: its count stands.
	fleet, err := sim.New(sim.Options{Model: "H100", Count: 1, Trace: "steady"})
	if err != nil {
		t.Fatal(err)
	}
	if ret := fleet.Init(); ret != nvml.SUCCESS {
		t.Fatal(ret)
	}
	sc := mustNew(t, fleet, nil, nil)
	sc.ExpectFromPCI(sysfs)
	if e, p := inventoryOf(t, sc); e != 1 || p != 1 {
		t.Errorf("simulated GPU on a host with 3: expected %v present %v, want 1 and 1", e, p)
	}
}
