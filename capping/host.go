package capping

import (
	"strings"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// hostReading finds RAPL package power for capping.scope node.
type hostReading struct {
	logged bool
	w      float64
	found  bool
	series map[*sample.Series]bool
	view   func(*sample.Batch)
}

func (h *hostReading) init(c *Controller) {
	h.series = map[*sample.Series]bool{}
	h.view = c.sumRAPL
}

// rapl returns RAPL package power from the thermal collector's latest batch.
func (c *Controller) rapl() float64 {
	c.host.w, c.host.found = 0, false
	if c.store != nil {
		c.store.View("thermal", c.host.view)
	}
	if !c.host.found && !c.host.logged {
		c.log.Warn("capping: scope node, but no RAPL package power is in the store (thermal collector off, or no powercap on this host); measuring GPU power only")
		c.host.logged = true
	}
	return c.host.w
}

func (c *Controller) sumRAPL(b *sample.Batch) {
	if b == nil {
		return
	}
	for _, p := range b.Points {
		if p.Series.Def != metrics.HWPower {
			continue
		}
		pkg, seen := c.host.series[p.Series]
		if !seen {
			typ, _ := p.Series.Attrs.Value(metrics.AttrHWType)
			name, _ := p.Series.Attrs.Value(metrics.AttrHWName)
			id, _ := p.Series.Attrs.Value(metrics.AttrHWID)
			pkg = typ.AsString() == "cpu" && strings.HasPrefix(name.AsString(), "package") && strings.Contains(id.AsString(), "rapl")
			c.host.series[p.Series] = pkg
		}
		if pkg {
			c.host.w += p.Value
			c.host.found = true
		}
	}
}
