package capping

import "time"

// HostPower measures the node's power outside the GPUs that capping.scope node adds to the
// measured power P: the CPU packages' RAPL power (package internal/rapl implements it).
type HostPower interface {
	// PackageWatts returns the CPU packages' power over the interval ending at at; ok is false
	// while it is unknown (no RAPL, a first reading, a counter that did not read).
	PackageWatts() (watts float64, at time.Time, ok bool)
}

// hostReading is the controller's use of its HostPower.
type hostReading struct {
	src HostPower // nil: none on this host
	// missing is set while no usable reading comes, so the change is logged once each way.
	missing bool
}

// hostWatts returns the packages' power for this period at now. A reading older than one
// period is not used: P is then the GPUs' power alone, as on a host without RAPL, and the
// controller says so once (and again once readings come back). Under capping.scope node the
// budget then leaves the CPUs' share unaccounted, so the GPUs may be given up to that much more.
func (c *Controller) hostWatts(now time.Time) float64 {
	h := &c.host
	w, at, ok := 0.0, time.Time{}, false
	if h.src != nil {
		w, at, ok = h.src.PackageWatts()
	}
	if ok && now.Sub(at) <= c.set.Period {
		if h.missing {
			c.log.Info("capping: RAPL package power back; measuring GPU and package power")
			h.missing = false
		}
		return w
	}
	if !h.missing {
		switch {
		case h.src == nil:
			c.log.Warn("capping: scope node, but no RAPL package power on this host (no powercap, or its counters are not readable); measuring GPU power only")
		case ok:
			c.log.Warn("capping: scope node, but no RAPL package power: the last reading is older than a control period; measuring GPU power only",
				"age", now.Sub(at), "period", c.set.Period)
		default:
			c.log.Warn("capping: scope node, but no RAPL package power this period (a first reading, or a counter that did not read); measuring GPU power only")
		}
		h.missing = true
	}
	return 0
}
