// Package capping is the node power controller: every control period it measures GPU power,
// moves a total GPU cap with a PI(D) law so measured power holds a setpoint under the node's
// budget, splits that cap across GPUs and writes the limits through nvml.Interface, never
// outside a GPU's constraints and always with the original limits saved first.
package capping

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// StoreKey is the key of the controller's batch in the sample store.
const StoreKey = "capping"

// Settings tune the controller; Defaults returns the documented defaults.
type Settings struct {
	Period time.Duration
	// Scope is gpu (measured power is the GPUs' sum) or node (plus RAPL package power).
	Scope string
	// GuardBand is the share of the budget kept free: S = B × (1 − GuardBand).
	GuardBand float64
	// Oversubscription lets the total cap exceed the budget by this share when the GPUs draw
	// less than their caps.
	Oversubscription float64
	// HeadroomW is what a GPU that is not power-bound gets above its draw.
	HeadroomW float64
	// DeadbandW suppresses limit changes smaller than this.
	DeadbandW float64
	// Ramp is the most the total cap rises in one period, as a share of Σ max.
	Ramp float64
	// LostPeriods is how many periods of missing power readings trigger failsafe caps.
	LostPeriods int
	// FallbackW is the budget once the source's budget is past its TTL or never came; zero
	// means Σ min.
	FallbackW float64
	DryRun    bool
	StateFile string
	// OnExit is restore or keep: what Stop(ExitConfigured) does with the limits.
	OnExit string
	// AfterCrash is restore or adopt: what Start does with limits left by an agent that did
	// not stop cleanly.
	AfterCrash string
	// Weights maps a GPU index ("0") or UUID to its priority weight; absent means 1.
	Weights map[string]float64
	// Kp, Ki and Kd are the gains per control period: a watt of error moves the cap by Kp W at
	// once and by Ki W per period; Kd W per watt of change in measured power per period.
	Kp, Ki, Kd float64
}

// Defaults returns the default settings.
func Defaults() Settings {
	return Settings{
		Period: time.Second, Scope: "gpu", GuardBand: 0.03, Oversubscription: 0.05,
		HeadroomW: 15, DeadbandW: 5, Ramp: 0.05, LostPeriods: 3,
		StateFile: "/var/lib/capstan/state.json", OnExit: "restore", AfterCrash: "restore",
		Kp: 0.3, Ki: 0.6, Kd: 0.1,
	}
}

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
	drawW        float64
	weight       float64
	ok           bool // read this period
	// oobMW is an out-of-band limit found below ours (a BMC, the driver); while it is
	// trusted (until tick oobUntil) the controller allots the GPU no more than it.
	oobMW      uint32
	oobUntil   uint64
	refusedRet nvml.Return
	fields     [1]nvml.FieldValue

	actOK, actRefused, overrides float64
	sLimit, sOK, sRefused, sOver *sample.Series
}

// Controller is the node power controller. Tick runs one control period; Run ticks on a timer.
// Its methods are not safe for concurrent use: one goroutine drives it.
type Controller struct {
	set   Settings
	lib   nvml.Interface
	src   budget.Source
	store *sample.Store
	log   *slog.Logger
	now   func() time.Time

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

	started  bool
	capW     float64
	integral float64
	prevP    float64
	havePrev bool
	lost     int
	mode     Mode
	budgetW  float64
	budget   budget.Budget // the source's budget this period, when it was usable
	setW     float64
	measW    float64
	errW     float64
	// slackW is the headroom the GPUs that are not power-bound hold: what they could surge
	// into before the next period.
	slackW   float64
	lastDP   float64
	overS    float64
	lastTick time.Time
	ticks    uint64

	fallbackLogged, raplLogged bool
	raplW                      float64
	raplFound                  bool
	raplSeries                 map[*sample.Series]bool
	raplView                   func(*sample.Batch)

	batches                                    [2]sample.Batch
	cur                                        int
	sBudget, sFallback                         *sample.Series
	sSetpoint, sMeasured, sError, sCap, sOverS *sample.Series
	sMode                                      [numModes]*sample.Series
}

// Options are what New needs.
type Options struct {
	Settings Settings
	Lib      nvml.Interface // initialised
	Budget   budget.Source
	Store    *sample.Store // where the controller publishes; may be nil
	Log      *slog.Logger
	Now      func() time.Time
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
	c := &Controller{set: s, lib: o.Lib, src: o.Budget, store: o.Store, log: log, now: now, raplSeries: map[*sample.Series]bool{}}
	c.raplView = c.sumRAPL
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
	}
	if len(c.gpus) == 0 {
		return nil, fmt.Errorf("capping: no GPU can be capped: %w", errors.Join(skipped...))
	}
	c.shares = make([]gpuShare, len(c.gpus))
	c.targets = make([]uint32, len(c.gpus))
	c.buildSeries()
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

func (c *Controller) buildSeries() {
	scope := attribute.String(metrics.AttrCappingScope, c.set.Scope)
	c.sBudget = sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, c.src.Name()))
	c.sFallback = sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, "fallback"))
	c.sSetpoint = sample.NewSeries(metrics.CappingSetpoint, scope)
	c.sMeasured = sample.NewSeries(metrics.CappingMeasured, scope)
	c.sError = sample.NewSeries(metrics.CappingError, scope)
	c.sCap = sample.NewSeries(metrics.CappingCapTotal, scope)
	c.sOverS = sample.NewSeries(metrics.CappingOverBudgetTime, scope)
	for m := range numModes {
		c.sMode[m] = sample.NewSeries(metrics.CappingMode, attribute.String(metrics.AttrCappingMode, m.String()))
	}
	points := 7 + int(numModes) + 4*len(c.gpus)
	for i := range c.batches {
		c.batches[i].Points = make([]sample.Point, 0, points)
	}
}

func watts(mw uint32) float64 { return float64(mw) / 1000 }

// clamp bounds a limit to the GPU's constraints.
func (g *gpu) clamp(mw uint32) uint32 { return min(max(mw, g.minMW), g.maxMW) }

// Start saves the original limits to the state file before anything is written, or, when a
// state file is already there, takes the originals from it: after a crash it restores them or
// adopts the limits in force (AfterCrash); after a clean hand-over it adopts them silently.
// Under dry-run it neither reads nor writes the state file.
func (c *Controller) Start() error {
	c.started = true
	c.mode = ModeActive
	if c.set.DryRun {
		c.mode = ModeDryRun
		for _, g := range c.gpus {
			g.originalMW = g.requestedMW
		}
		c.capW = c.clampCap(c.sumEnforced(), math.Inf(1))
		c.integral = c.capW
		c.log.Info("capping in dry run: computing limits, writing none", "gpus", len(c.gpus), "budget_source", c.src.Name())
		return nil
	}
	st, err := ReadState(c.set.StateFile)
	if err != nil {
		return err
	}
	for _, g := range c.gpus {
		g.originalMW = g.requestedMW
		if st != nil {
			if mw, ok := st.original(g.uuid); ok {
				g.originalMW = mw
			}
		}
	}
	if st != nil {
		for _, o := range st.GPUs {
			if !c.namesGPU(o.UUID) {
				c.others = append(c.others, o)
			}
		}
	}
	switch {
	case st == nil:
		c.log.Info("capping: original GPU limits saved", "state_file", c.set.StateFile)
	case st.Clean:
		c.log.Info("capping: resuming with the original limits from the state file", "state_file", c.set.StateFile)
	case c.set.AfterCrash == "adopt":
		c.log.Warn("capping: state file left by an agent that did not stop cleanly; adopting the limits in force", "state_file", c.set.StateFile, "pid", st.PID)
	default:
		c.log.Warn("capping: state file left by an agent that did not stop cleanly; restoring the original limits", "state_file", c.set.StateFile, "pid", st.PID)
		if _, err := c.restoreWithin(c.leaveWatts()); err != nil {
			// The GPUs that took their original back are safe; capping goes on for all.
			c.log.Error("capping: restoring limits after a crash failed on some GPUs", "err", err)
		}
	}
	if err := c.saveState(false); err != nil {
		return fmt.Errorf("capping: not writing any limit, the original limits could not be saved: %w", err)
	}
	for _, g := range c.gpus {
		g.ourMW = g.requestedMW
	}
	c.capW = c.clampCap(c.sumEnforced(), math.Inf(1))
	c.integral = c.capW
	c.log.Info("capping active", "gpus", len(c.gpus), "budget_source", c.src.Name(), "period", c.set.Period, "scope", c.set.Scope)
	return nil
}

func (c *Controller) sumEnforced() float64 {
	sum := 0.0
	for _, g := range c.gpus {
		sum += watts(g.clamp(g.enforcedMW))
	}
	return sum
}

func (c *Controller) saveState(clean bool) error {
	st := &State{Clean: clean, PID: os.Getpid(), Saved: time.Now().UTC()}
	for _, g := range c.gpus {
		st.GPUs = append(st.GPUs, GPUState{UUID: g.uuid, Index: g.index, OriginalMilliwatts: g.originalMW})
	}
	st.GPUs = append(st.GPUs, c.others...)
	return WriteState(c.set.StateFile, st)
}

// leaveWatts is the most the limits may sum to while no agent steers them: the source's (a
// cluster node's floor), else no bound.
func (c *Controller) leaveWatts() float64 {
	if l, ok := c.src.(budget.Leaver); ok {
		return l.LeaveWatts()
	}
	return math.Inf(1)
}

// restoreWithin writes the original limits back as far as their sum stays within w: all of
// them when it fits, else each GPU gets its minimum plus the same fraction of the way to its
// original (whole watts, rounded down). It reports whether every original was restored.
func (c *Controller) restoreWithin(w float64) (complete bool, err error) {
	var sumMin, sumOrig float64 // mW, exact
	for _, g := range c.gpus {
		sumMin += float64(g.minMW)
		sumOrig += float64(g.clamp(g.originalMW))
	}
	frac := 1.0
	if sumOrig > w*1000 && sumOrig > sumMin {
		frac = max(0, (w*1000-sumMin)/(sumOrig-sumMin))
	}
	var errs []error
	for _, g := range c.gpus {
		orig := g.clamp(g.originalMW)
		mw := orig
		if frac < 1 {
			mw = max(g.minMW, (g.minMW+uint32(float64(orig-g.minMW)*frac))/1000*1000)
		}
		if ret := g.dev.SetPowerManagementLimit(mw); ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("GPU %d (%s) to %d mW: %w", g.index, g.uuid, mw, ret))
			continue
		}
		g.ourMW, g.requestedMW = mw, mw
	}
	return frac >= 1, errors.Join(errs...)
}

// Stop ends capping. ExitConfigured applies OnExit: restore writes the original limits back
// and removes the state file (kept, for the next start to retry, when a write fails); keep
// leaves the limits and marks the state file clean. ExitHold is keep regardless of OnExit.
func (c *Controller) Stop(how Exit) error {
	if !c.started || c.set.DryRun {
		return nil
	}
	c.started = false
	if how == ExitConfigured && c.set.OnExit == "restore" {
		// A cluster node's group keeps only its floor once it left: originals beyond it wait
		// in the state file for the next start.
		leave := c.leaveWatts()
		complete, err := c.restoreWithin(leave)
		if err != nil {
			return fmt.Errorf("capping: restoring the original limits (state file %s kept for the next start): %w", c.set.StateFile, err)
		}
		// Originals not all written back (the group floor), or those of GPUs this agent could
		// not cap, live on only in the state file: keep it, marked clean.
		if !complete || len(c.others) > 0 {
			if err := c.saveState(true); err != nil {
				return fmt.Errorf("capping: marking the state file clean: %w", err)
			}
			if !complete {
				c.log.Info("capping stopped: GPU limits restored as far as the node's share of its group allows",
					"watts", leave, "state_file", c.set.StateFile)
			} else {
				c.log.Info("capping stopped: original GPU limits restored; the state file keeps those of GPUs that were not capped", "state_file", c.set.StateFile)
			}
			return nil
		}
		if err := os.Remove(c.set.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("capping: removing state file: %w", err)
		}
		c.log.Info("capping stopped: original GPU limits restored")
		return nil
	}
	if err := c.saveState(true); err != nil {
		return fmt.Errorf("capping: marking the state file clean: %w", err)
	}
	c.log.Info("capping stopped: GPU limits left in place", "state_file", c.set.StateFile)
	return nil
}

// Run drives the controller every period until ctx is done, and the budget source beside it.
func (c *Controller) Run(ctx context.Context) {
	go c.src.Run(ctx)
	t := time.NewTicker(c.set.Period)
	defer t.Stop()
	c.Tick(c.now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Tick(c.now())
		}
	}
}

// Mode returns the current mode.
func (c *Controller) Mode() Mode { return c.mode }

// CapW returns the total cap C the last period set.
func (c *Controller) CapW() float64 { return c.capW }

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

// Tick runs one control period at now. It allocates nothing unless it logs.
func (c *Controller) Tick(now time.Time) {
	dt := c.set.Period.Seconds()
	if !c.lastTick.IsZero() {
		dt = now.Sub(c.lastTick).Seconds()
	}
	c.lastTick = now
	c.ticks++

	useFallback := c.readBudget(now)
	c.setW = c.budgetW * (1 - c.set.GuardBand)

	missing := c.measure()
	if c.measW > c.budgetW && missing == 0 {
		c.overS += dt
	}
	c.errW = c.setW - c.measW
	hi := c.budgetW * (1 + c.set.Oversubscription)

	acted := false
	switch {
	case missing > 0:
		c.lost++
		if c.lost >= c.set.LostPeriods {
			c.failsafe(hi)
			acted = true
		}
	default:
		if c.mode == ModeFailsafe {
			c.log.Info("capping: power readings back; leaving failsafe caps")
			c.havePrev = false
			c.integral = c.capW
		}
		c.lost = 0
		c.mode = ModeActive
		if c.set.DryRun {
			c.mode = ModeDryRun
		}
		c.control(hi)
		c.allocate()
		c.actuate()
		acted = true
	}
	if acted && !useFallback {
		c.acknowledge(hi)
	}
	c.publish(now, useFallback)
}

// acknowledge tells a source that wants to know (a cluster grant) that the limits are within its
// budget: the limits the GPUs report (after this period's writes, refused ones included) sum to
// no more than the cap allowed under this budget (the oversubscription ceiling, or Σ min when
// that is higher). Under dry-run the computed limits count: nothing is enforced, and the
// allocator is not kept waiting.
func (c *Controller) acknowledge(hi float64) {
	ack, ok := c.src.(budget.Acknowledger)
	if !ok {
		return
	}
	sumMW := 0.0
	for _, g := range c.gpus {
		if c.set.DryRun {
			sumMW += float64(g.ourMW)
		} else {
			sumMW += float64(g.requestedMW)
		}
	}
	if sumMW/1000 > max(hi, c.sumMin)+0.001 {
		return
	}
	ack.Applied(c.budget)
}

// readBudget sets budgetW from the source, or the fallback when its budget expired or never
// came; it reports whether the fallback is in use.
func (c *Controller) readBudget(now time.Time) bool {
	b, ok := c.src.Current()
	if ok && !b.Expired(now) && b.Valid() {
		if c.fallbackLogged {
			c.log.Info("capping: budget back from its source", "watts", b.Watts, "source", b.Source)
			c.fallbackLogged = false
		}
		c.budgetW, c.budget = b.Watts, b
		return false
	}
	c.budgetW = c.set.FallbackW
	if c.budgetW <= 0 {
		c.budgetW = c.sumMin
	}
	if !c.fallbackLogged {
		c.log.Warn("capping: no current budget (expired or never received); using the fallback budget", "fallback_watts", c.budgetW, "last_watts", b.Watts, "ttl", b.TTL)
		c.fallbackLogged = true
	}
	return true
}

// measure reads every GPU's instant power and limits, counts limits changed behind our back
// and returns how many GPUs gave no power reading.
func (c *Controller) measure() int {
	missing := 0
	c.measW, c.slackW = 0, 0
	for _, g := range c.gpus {
		g.ok = false
		ret := g.dev.GetFieldValues(g.fields[:])
		if ret != nvml.SUCCESS || nvml.Return(g.fields[0].NvmlReturn) != nvml.SUCCESS {
			missing++
			continue
		}
		g.drawW = float64(binary.LittleEndian.Uint32(g.fields[0].Value[:4])) / 1000
		c.measW += g.drawW
		req, ret := g.dev.GetPowerManagementLimit()
		if ret != nvml.SUCCESS {
			missing++
			continue
		}
		enf, ret := g.dev.GetEnforcedPowerLimit()
		if ret != nvml.SUCCESS {
			enf = req
		}
		g.requestedMW, g.enforcedMW, g.ok = req, enf, true
		if !c.set.DryRun && c.mode != ModeFailsafe && g.ourMW != 0 && req != g.ourMW {
			g.overrides++
			c.log.Warn("capping: GPU power limit changed behind our back; re-applying ours",
				"gpu", g.index, "found_watts", watts(req), "ours_watts", watts(g.ourMW))
		}
		c.checkOutOfBand(g)
		limitW := watts(enf)
		if g.drawW < limitW-c.bindMargin(limitW) {
			c.slackW += c.set.HeadroomW
		}
	}
	if c.set.Scope == "node" {
		c.measW += c.rapl()
	}
	return missing
}

// oobTrust is how many periods an out-of-band limit is taken as the GPU's maximum before the
// controller asks for more again, to notice that it was lifted.
const oobTrust = 60

// checkOutOfBand counts an enforced limit below the requested one (a BMC, the driver) once per
// distinct value; the controller then treats it as the GPU's maximum for oobTrust periods.
func (c *Controller) checkOutOfBand(g *gpu) {
	if g.enforcedMW >= g.requestedMW {
		return
	}
	if g.enforcedMW != g.oobMW {
		g.overrides++
		c.log.Warn("capping: an out-of-band limit below ours is in force on a GPU", "gpu", g.index,
			"enforced_watts", watts(g.enforcedMW), "requested_watts", watts(g.requestedMW))
	}
	g.oobMW, g.oobUntil = g.enforcedMW, c.ticks+oobTrust
}

// rapl returns RAPL package power from the thermal collector's latest batch.
func (c *Controller) rapl() float64 {
	c.raplW, c.raplFound = 0, false
	if c.store != nil {
		c.store.View("thermal", c.raplView)
	}
	if !c.raplFound && !c.raplLogged {
		c.log.Warn("capping: scope node, but no RAPL package power is in the store (thermal collector off, or no powercap on this host); measuring GPU power only")
		c.raplLogged = true
	}
	return c.raplW
}

func (c *Controller) sumRAPL(b *sample.Batch) {
	if b == nil {
		return
	}
	for _, p := range b.Points {
		if p.Series.Def != metrics.HWPower {
			continue
		}
		pkg, seen := c.raplSeries[p.Series]
		if !seen {
			typ, _ := p.Series.Attrs.Value(metrics.AttrHWType)
			name, _ := p.Series.Attrs.Value(metrics.AttrHWName)
			id, _ := p.Series.Attrs.Value(metrics.AttrHWID)
			pkg = typ.AsString() == "cpu" && strings.HasPrefix(name.AsString(), "package") && strings.Contains(id.AsString(), "rapl")
			c.raplSeries[p.Series] = pkg
		}
		if pkg {
			c.raplW += p.Value
			c.raplFound = true
		}
	}
}

// clampCap bounds the total cap to [Σ min, min(Σ max, hi)]; Σ min wins when the two cross,
// since no GPU can be set below its minimum.
func (c *Controller) clampCap(capW, hi float64) float64 {
	return max(c.sumMin, min(capW, c.sumMax, hi))
}

// control moves the total cap with a positional PI(D) law: C = I + Kp·e − Kd·ΔP, with I
// integrating Ki·e. A decrease is applied at once (at least the whole error), an increase is
// limited to Ramp × Σ max per period, and after clamping I is recomputed from C
// (back-calculation), so a saturated or rate-limited cap never winds the integral up.
func (c *Controller) control(hi float64) {
	e := c.errW
	dP := 0.0
	if c.havePrev {
		dP = c.measW - c.prevP
	}
	c.prevP, c.havePrev, c.lastDP = c.measW, true, dP
	prev := c.capW
	c.integral += c.set.Ki * e
	next := c.integral + c.set.Kp*e - c.set.Kd*dP
	if e < 0 {
		next = min(next, prev+e)
	}
	// Oversubscription only as far as the headroom of GPUs below their limits: caps above the
	// setpoint are watts a surge could take before the next period.
	hi = min(hi, max(c.setW+c.slackW, c.sumMin))
	if next > prev {
		next = min(next, prev+c.set.Ramp*c.sumMax)
	}
	next = c.clampCap(next, hi)
	c.integral = next - c.set.Kp*e + c.set.Kd*dP
	c.capW = next
}

// bindMargin is how close to its limit a GPU draws to count as power-bound: it would use more.
func (c *Controller) bindMargin(limitW float64) float64 {
	return max(0.5*c.set.HeadroomW, 0.02*limitW)
}

// allocate splits the cap across GPUs into their shares.
func (c *Controller) allocate() {
	for i, g := range c.gpus {
		s := &c.shares[i]
		s.minW, s.maxW = watts(g.minMW), watts(g.maxMW)
		if g.oobMW > 0 && c.ticks < g.oobUntil {
			s.maxW = max(s.minW, min(s.maxW, watts(g.oobMW)))
		}
		s.limitW = watts(g.enforcedMW)
		s.drawW = g.drawW
		s.weight = g.weight
		s.bound = g.drawW >= s.limitW-c.bindMargin(s.limitW)
		step := max(2*c.set.HeadroomW, c.set.Ramp*2*s.maxW)
		s.upW = max(s.minW, min(s.maxW, max(s.limitW, watts(g.ourMW))+step))
	}
	given := distribute(c.shares, c.capW, c.set.HeadroomW)
	// What the GPUs could not take this period is not kept as cap: C is what is applied, so
	// it cannot float up on slack the GPUs would surge into.
	if given < c.capW && given >= c.sumMin {
		c.capW = given
		c.integral = given - c.set.Kp*c.errW + c.set.Kd*c.lastDP
	}
}

// actuate writes the shares as limits. Each limit is rounded down to a whole watt and clamped
// to the GPU's constraints. Changes smaller than the deadband are skipped, except decreases
// needed to keep Σ limits within the total cap.
func (c *Controller) actuate() {
	deadMW := uint32(c.set.DeadbandW * 1000)
	sumMW := 0.0
	for i, g := range c.gpus {
		target := c.targetMW(g, c.shares[i].allocW)
		c.targets[i] = target
		c.shares[i].allocW = watts(target)
		if g.ok && absDiff(target, g.requestedMW) < deadMW && g.requestedMW == g.ourMW {
			sumMW += float64(g.requestedMW)
			continue
		}
		sumMW += float64(target)
	}
	capMW := math.Max(c.capW, c.sumMin) * 1000
	for i, g := range c.gpus {
		target := c.targets[i]
		skip := g.ok && absDiff(target, g.requestedMW) < deadMW && g.requestedMW == g.ourMW
		if skip && target < g.requestedMW && sumMW > capMW {
			skip = false
			sumMW -= float64(g.requestedMW - target)
		}
		if !skip {
			c.write(g, target)
		}
	}
}

func absDiff(a, b uint32) uint32 {
	if a > b {
		return a - b
	}
	return b - a
}

// targetMW turns a share in watts into a limit NVML accepts.
func (c *Controller) targetMW(g *gpu, w float64) uint32 {
	mw := uint32(math.Floor(max(0, w))) * 1000
	return g.clamp(mw)
}

// write sets one GPU's limit and reads it back; under dry-run it only records it. The limit is
// clamped to the GPU's constraints here too, so no path can ask NVML for one outside them.
func (c *Controller) write(g *gpu, mw uint32) {
	mw = g.clamp(mw)
	if c.set.DryRun {
		g.ourMW = mw
		return
	}
	if !g.ok && g.ourMW == mw {
		return // unreadable GPU already at the value: do not hammer it
	}
	if ret := g.dev.SetPowerManagementLimit(mw); ret != nvml.SUCCESS {
		g.actRefused++
		if g.refusedRet != ret {
			c.log.Error("capping: GPU refused a power limit; leaving its limit as it was",
				"gpu", g.index, "watts", watts(mw), "constraints_watts", fmt.Sprintf("%g..%g", watts(g.minMW), watts(g.maxMW)), "err", ret)
			g.refusedRet = ret
		}
		return
	}
	g.refusedRet = nvml.SUCCESS
	g.actOK++
	g.ourMW, g.requestedMW = mw, mw
	enf, ret := g.dev.GetEnforcedPowerLimit()
	if ret == nvml.SUCCESS {
		g.enforcedMW = enf
		c.checkOutOfBand(g)
	}
}

// failsafe applies static caps B / n when power readings are lost: safe whatever the GPUs draw.
func (c *Controller) failsafe(hi float64) {
	if c.mode != ModeFailsafe {
		c.log.Error("capping: power readings lost; applying static failsafe caps of budget / GPUs",
			"periods", c.lost, "per_gpu_watts", c.budgetW/float64(len(c.gpus)))
	}
	c.mode = ModeFailsafe
	c.havePrev = false
	per := c.budgetW / float64(len(c.gpus))
	sum := 0.0
	for _, g := range c.gpus {
		mw := c.targetMW(g, per)
		sum += watts(mw)
		if mw != g.ourMW || g.requestedMW != mw {
			c.write(g, mw)
		}
	}
	c.capW = c.clampCap(sum, hi)
	c.integral = c.capW
}

// publish puts the period's batch in the store; two batches alternate, so the one readers may
// hold is never the one being filled.
func (c *Controller) publish(now time.Time, fallback bool) {
	if c.store == nil {
		return
	}
	b := &c.batches[c.cur]
	c.cur ^= 1
	b.Reset(StoreKey, now)
	sb := c.sBudget
	if fallback {
		sb = c.sFallback
	}
	b.Add(sb, c.budgetW)
	b.Add(c.sSetpoint, c.setW)
	b.Add(c.sMeasured, c.measW)
	b.Add(c.sError, c.errW)
	b.Add(c.sCap, c.capW)
	b.Add(c.sOverS, c.overS)
	for m := range numModes {
		v := 0.0
		if m == c.mode {
			v = 1
		}
		b.Add(c.sMode[m], v)
	}
	for _, g := range c.gpus {
		b.Add(g.sLimit, watts(g.ourMW))
		b.Add(g.sOK, g.actOK)
		b.Add(g.sRefused, g.actRefused)
		b.Add(g.sOver, g.overrides)
	}
	c.store.Put(StoreKey, b)
}
