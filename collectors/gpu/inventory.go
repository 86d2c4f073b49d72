package gpu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// A GPU that is lost while the agent runs shows as failed under its index; one that was gone
// before the agent started may not be enumerated at all. The inventory counts the GPUs the host
// should have against those answering, so that a GPU missing since the start is seen too.

// nvidiaVendor is NVIDIA's PCI vendor id; pciClassDisplay is the PCI base class of display
// controllers (VGA 0x0300, 3D 0x0302), which excludes NVSwitches (bridges).
const (
	nvidiaVendor    = 0x10de
	pciClassDisplay = 0x03
)

// pciGPUs counts NVIDIA display controllers under sysfs's bus/pci/devices; 0 when the tree is
// not readable.
func pciGPUs(sysfs string) int {
	dir := filepath.Join(sysfs, "bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		vendor, err1 := readHex(filepath.Join(dir, e.Name(), "vendor"))
		class, err2 := readHex(filepath.Join(dir, e.Name(), "class"))
		if err1 == nil && err2 == nil && vendor == nvidiaVendor && class>>16 == pciClassDisplay {
			n++
		}
	}
	return n
}

func readHex(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(data)), "0x"), 16, 32)
}

// inventory is the expected and present GPU counts.
type inventory struct {
	expected            int
	expectedS, presentS *sample.Series
}

func newInventory(enumerated int) inventory {
	gpu := attribute.String(metrics.AttrHWType, "gpu")
	return inventory{expected: enumerated, expectedS: sample.NewSeries(metrics.GPUsExpected, gpu), presentS: sample.NewSeries(metrics.GPUsPresent, gpu)}
}

// ExpectFromPCI raises the expected GPU count to the NVIDIA GPUs on the PCI bus under sysfs. It
// does nothing for the simulator, whose GPUs are not the host's.
func (c *Collector) ExpectFromPCI(sysfs string) {
	if _, simulated := c.lib.(*sim.Fleet); simulated {
		return
	}
	if n := pciGPUs(sysfs); n > c.inv.expected {
		c.log.Warn("fewer GPUs answer NVML than are on the PCI bus", "nvml", c.inv.expected, "pci", n)
		c.inv.expected = n
	}
}

// addInventory adds the counts to b.
func (c *Collector) addInventory(b *sample.Batch) {
	present := 0
	for _, d := range c.devices {
		if !d.lost {
			present++
		}
	}
	b.Add(c.inv.expectedS, float64(c.inv.expected))
	b.Add(c.inv.presentS, float64(present))
}
