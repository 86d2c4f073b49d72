package gpu

import (
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// reprobeEvery is how often a lost GPU is looked for again. A GPU comes back after a reset or a
// driver reload, which takes tens of seconds; asking more often would only add NVML calls to a
// node that is already in trouble.
const reprobeEvery = 30 * time.Second

// indexPlaceholder prefixes the identity of a GPU that could not be opened at start.
const indexPlaceholder = "gpu-index-"

// markLost records that d fell off the bus now; it is looked for again from reprobeEvery on.
func (c *Collector) markLost(d *device) {
	d.lost = true
	d.lostProbedAt = c.now()
}

// reprobe looks for a lost GPU again, by UUID (by index when it was never opened), at most once
// per reprobeEvery. When it answers, the collector queries it again from this collection on.
func (c *Collector) reprobe(d *device) {
	now := c.now()
	if now.Sub(d.lostProbedAt) < reprobeEvery {
		return
	}
	d.lostProbedAt = now
	var dev nvml.Device
	var ret nvml.Return
	neverOpened := strings.HasPrefix(d.uuid, indexPlaceholder)
	if neverOpened {
		dev, ret = c.lib.DeviceGetHandleByIndex(d.index)
	} else {
		dev, ret = c.lib.DeviceGetHandleByUUID(d.uuid)
	}
	if ret != nvml.SUCCESS {
		c.log.Debug("lost GPU still missing", "gpu", d.index, "uuid", d.uuid, "err", ret)
		return
	}
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		c.log.Debug("lost GPU still not answering", "gpu", d.index, "uuid", d.uuid, "err", ret)
		return
	}
	if neverOpened {
		// The GPU is known under its index only: give it its identity now. The placeholder's
		// series are simply not exported any more, so they go stale.
		fresh := c.openDevice(d.index)
		if fresh.lost {
			return
		}
		fresh.xids = d.xids
		*d = *fresh
	} else {
		d.dev = dev
		if d.mig != nil {
			d.mig.stale = true // the instances' handles are from before the outage
		}
		d.nvlink = nil // links are found again
	}
	d.lost = false
	clear(d.failing)
	// The PCIe estimate integrates a rate over the time between readings: do not stretch one
	// reading over the whole outage.
	d.pcieTx.last, d.pcieRx.last = time.Time{}, time.Time{}
	c.reopenGPM(d)
	if c.events != nil {
		if supported, ret := dev.GetSupportedEventTypes(); ret == nvml.SUCCESS && supported&nvml.EventTypeXidCriticalError != 0 {
			if ret := dev.RegisterEvents(nvml.EventTypeXidCriticalError, c.events); ret != nvml.SUCCESS {
				c.log.Info("registering XID events of a GPU that came back", "gpu", d.index, "err", ret)
			}
		}
	}
	c.log.Info("lost GPU answers again; collecting it", "gpu", d.index, "uuid", uuid)
}
