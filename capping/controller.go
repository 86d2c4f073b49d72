// Package capping is the node power controller: every control period it measures GPU power,
// moves a total GPU cap with a PI(D) law so measured power holds a setpoint under the node's
// budget, splits that cap across GPUs and writes the limits through nvml.Interface, never
// outside a GPU's constraints and always with the original limits saved first.
package capping

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// Mode is what the controller is doing.
type Mode int

// Modes, in the order of capstan.capping.mode's attribute values.
const (
	ModeActive   Mode = iota // writing limits
	ModeDryRun               // computing, writing nothing
	ModeFailsafe             // power readings lost: static caps B / n
	numModes
)

var modeNames = [numModes]string{"active", "dry_run", "failsafe"}

func (m Mode) String() string { return modeNames[m] }

// Exit is what Stop does with the GPUs' limits.
type Exit int

const (
	// ExitConfigured applies the on_exit setting (SIGTERM).
	ExitConfigured Exit = iota
	// ExitHold leaves the limits in place and marks the state file clean, so the controller of
	// a reloaded configuration takes over without restoring and re-capping.
	ExitHold
)

// gpu is the controller's view of one GPU.
type gpu struct {
	dev          nvml.Device
	index        int
	uuid         string
	minMW, maxMW uint32
	originalMW   uint32
	requestedMW  uint32 // last read GetPowerManagementLimit
	enforcedMW   uint32 // last read GetEnforcedPowerLimit
	ourMW        uint32 // what we last wrote (or computed, in dry-run); 0 before the first
	// loggedOverrideMW is the limit found behind our back last logged; 0 when none is.
	loggedOverrideMW uint32
	drawW            float64
	weight           float64
	ok               bool // read this period
	// oobMW is an out-of-band limit found below ours (a BMC, the driver), 0 when none: the
	// controller allots the GPU no more than it, and after tick oobUntil a probe above it.
	oobMW      uint32
	oobUntil   uint64
	refusedRet nvml.Return
	fields     [1]nvml.FieldValue
	win        gpuWindow // recent demand

	actOK, actRefused, overrides float64
	sLimit, sOK, sRefused, sOver *sample.Series
}

// Controller is the node power controller. Tick runs one control period; Run ticks on a timer.
// Its methods are not safe for concurrent use: one goroutine drives it.
//
// Its parts live in files of their own: lifecycle.go (Start, Stop, the state file), loop.go
// (one period: read → law → split → write → report), law.go (the control law's state),
// host.go (RAPL package power), publish.go (its metrics).
type Controller struct {
	set Settings
	lib nvml.Interface
	src budget.Source
	log *slog.Logger
	now func() time.Time

	gpus   []*gpu
	shares []gpuShare
	// targets are this period's limits in mW, kept as integers: a round trip through watts
	// can land a milliwatt below a GPU's minimum, which NVML refuses.
	targets []uint32
	// others are state-file entries of GPUs this controller does not manage (lost at start):
	// their originals are kept for a later agent.
	others []GPUState
	sumMin float64
	sumMax float64
	// sumWeight is Σ weights, for the GPUs' fair shares.
	sumWeight float64
	// node is the node's recent Σ GPU power; winHead the GPU windows' current slot.
	node    nodeWindow
	winHead int

	// acker and reporter are the budget source's optional contracts: the controller
	// acknowledges grants and reports the node's draw and bounds back through them.
	acker    budget.Acknowledger
	reporter budget.Reporter

	started bool
	law     law
	periodState
	host hostReading
	pub  publisher
}

// periodState is what the control periods found and decided; the metrics publish it.
type periodState struct {
	lost    int // consecutive periods with missing power readings
	mode    Mode
	budgetW float64
	budget  budget.Budget // the source's budget this period, when it was usable
	setW    float64
	measW   float64
	errW    float64
	// hostW is the host's power this period under scope node (RAPL), 0 otherwise.
	hostW float64
	overS float64
	// tight is set when the budget fell, until the draw came down under it: the law's floor
	// is then the setpoint, not the budget.
	tight bool
	// cuts counts fast cuts: Σ caps pulled down between periods because Σ draw crossed the
	// budget.
	cuts     float64
	lastTick time.Time
	ticks    uint64

	fallbackLogged bool
	unmet          bool // the budget is below Σ min: said once, published every period
}

// Options are what New needs.
type Options struct {
	Settings Settings
	Lib      nvml.Interface // initialised
	Budget   budget.Source
	Store    *sample.Store // where the controller publishes; may be nil
	// Host measures the CPU packages' power for capping.scope node; nil when the host has
	// none (then P is the GPUs' power alone).
	Host HostPower
	Log  *slog.Logger
	Now  func() time.Time
}

// New finds the GPUs and their constraints. It writes nothing; Start does.
func New(o Options) (*Controller, error) {
	s := o.Settings
	if s.Period <= 0 || s.LostPeriods < 1 || s.Scope != "gpu" && s.Scope != "node" {
		return nil, fmt.Errorf("capping settings: period %s, lost periods %d, scope %q: invalid", s.Period, s.LostPeriods, s.Scope)
	}
	if o.Lib == nil || o.Budget == nil {
		return nil, errors.New("capping needs a GPU backend and a budget source")
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{set: s, lib: o.Lib, src: o.Budget, log: log, now: now, law: newLaw(s)}
	c.host.src = o.Host
	c.acker, _ = o.Budget.(budget.Acknowledger)
	c.reporter, _ = o.Budget.(budget.Reporter)
	n, ret := o.Lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("capping: counting GPUs: %w", ret)
	}
	if n == 0 {
		return nil, errors.New("capping: no GPU to cap")
	}
	var skipped []error
	for i := range n {
		g, err := c.openGPU(i)
		if err != nil {
			// A lost or broken GPU is left as it is; the others are still capped.
			log.Error("capping: a GPU cannot be capped and is left as it is", "gpu", i, "err", err)
			skipped = append(skipped, err)
			continue
		}
		c.gpus = append(c.gpus, g)
		c.sumMin += watts(g.minMW)
		c.sumMax += watts(g.maxMW)
		c.sumWeight += g.weight
	}
	if len(c.gpus) == 0 {
		return nil, fmt.Errorf("capping: no GPU can be capped: %w", errors.Join(skipped...))
	}
	slots := windowSlots(s.Period)
	for _, g := range c.gpus {
		g.win = newGPUWindow(slots)
	}
	c.node = newNodeWindow(slots)
	c.shares = make([]gpuShare, len(c.gpus))
	c.targets = make([]uint32, len(c.gpus))
	c.pub.init(c, o.Store)
	for key := range s.Weights {
		if !c.namesGPU(key) {
			log.Warn("capping: a weight names no GPU on this host; it is ignored", "gpu", key, "gpus", n)
		}
	}
	return c, nil
}

// namesGPU reports whether key is the index or UUID of one of the GPUs.
func (c *Controller) namesGPU(key string) bool {
	for _, g := range c.gpus {
		if key == strconv.Itoa(g.index) || key == g.uuid {
			return true
		}
	}
	return false
}

func (c *Controller) openGPU(i int) (*gpu, error) {
	dev, ret := c.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("capping: opening GPU %d: %w", i, ret)
	}
	g := &gpu{dev: dev, index: i, weight: 1}
	if g.uuid, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("capping: reading the UUID of GPU %d: %w", i, ret)
	}
	if g.minMW, g.maxMW, ret = dev.GetPowerManagementLimitConstraints(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("capping: reading the power limit constraints of GPU %d: %w", i, ret)
	}
	if g.minMW == 0 || g.maxMW < g.minMW {
		return nil, fmt.Errorf("capping: GPU %d reports power limit constraints %d..%d mW: cannot cap it", i, g.minMW, g.maxMW)
	}
	if g.requestedMW, ret = dev.GetPowerManagementLimit(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("capping: reading the power limit of GPU %d: %w", i, ret)
	}
	if g.enforcedMW, ret = dev.GetEnforcedPowerLimit(); ret != nvml.SUCCESS {
		g.enforcedMW = g.requestedMW
	}
	for _, key := range []string{strconv.Itoa(i), g.uuid} { // index or UUID
		if w, ok := c.set.Weights[key]; ok && w > 0 {
			g.weight = w
		}
	}
	name, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		name = ""
	}
	attrs := []attribute.KeyValue{
		attribute.String(metrics.AttrHWType, "gpu"), attribute.String(metrics.AttrHWID, g.uuid),
		attribute.String(metrics.AttrHWName, name), attribute.Int(metrics.AttrGPUIndex, i),
	}
	g.sLimit = sample.NewSeries(metrics.CappingGPULimit, attrs...)
	g.sOK = sample.NewSeries(metrics.CappingActuations, append(attrs, attribute.String(metrics.AttrCappingResult, "ok"))...)
	g.sRefused = sample.NewSeries(metrics.CappingActuations, append(attrs, attribute.String(metrics.AttrCappingResult, "refused"))...)
	g.sOver = sample.NewSeries(metrics.CappingOverrides, attrs...)
	g.fields[0].FieldId = nvml.FI_DEV_POWER_INSTANT
	return g, nil
}

// Mode returns the current mode.
func (c *Controller) Mode() Mode { return c.mode }

// CapW returns the total cap C the last period set.
func (c *Controller) CapW() float64 { return c.law.capW }

// MeasuredW returns the power P the last period measured.
func (c *Controller) MeasuredW() float64 { return c.measW }

// BudgetW returns the budget B the last period used.
func (c *Controller) BudgetW() float64 { return c.budgetW }

// Limits appends each GPU's applied (or, in dry-run, computed) limit in watts to dst.
func (c *Controller) Limits(dst []float64) []float64 {
	for _, g := range c.gpus {
		dst = append(dst, watts(g.ourMW))
	}
	return dst
}

// Overrides returns how many times limits were found changed behind the controller's back.
func (c *Controller) Overrides() float64 {
	n := 0.0
	for _, g := range c.gpus {
		n += g.overrides
	}
	return n
}

func watts(mw uint32) float64 { return float64(mw) / 1000 }

// bounds are the total cap's bounds under the ceiling ceilW.
func (c *Controller) bounds(ceilW float64) capBounds {
	return capBounds{MinW: c.sumMin, MaxW: c.sumMax, CeilW: ceilW}
}

// clamp bounds a limit to the GPU's constraints.
func (g *gpu) clamp(mw uint32) uint32 { return min(max(mw, g.minMW), g.maxMW) }
