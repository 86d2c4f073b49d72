package sim

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Time steps of the model. The fine step resolves the 100 ms power lag; a GPU that has not been
// read for long catches up in coarse steps, which the slower thermal model tolerates, and
// finishes with fineTail fine steps so the power lag and the 1 s average are exact again.
const (
	substep      = 10 * time.Millisecond
	substepS     = 0.010
	coarseSteps  = 100  // substeps per coarse step (1 s)
	fineTail     = 6000 // substeps always simulated finely before now (60 s)
	markEvery    = 10   // substeps between counter updates (NVML updates power at about 10 Hz)
	averageMarks = 10   // marks spanning GetPowerUsage's 1 s window
)

// Latency of a limit write: SetPowerManagementLimit takes 10–20 ms in the driver before the
// firmware enforces the new limit. Each write draws its own latency from the seed.
const (
	writeLatencyMin    = 10 * time.Millisecond
	writeLatencySpread = 10 * time.Millisecond
	// LimitWriteLatencyMax is the longest a written limit takes to bind.
	LimitWriteLatencyMax = writeLatencyMin + writeLatencySpread
)

// PowerControllerLag is the time constant with which the board's power controller brings the
// draw to a new limit.
const PowerControllerLag = 100 * time.Millisecond

// Time constants of the physics.
const (
	powerTauS       = float64(PowerControllerLag) / float64(time.Second)
	thermalTauS     = 20.0 // GPU die temperature
	memThermalTauS  = 30.0 // HBM heats and cools more slowly than the die
	defaultAmbientC = 30.0
	// memRiseShare and memOffsetC place HBM a few degrees off the die: warmer when idle, a
	// little cooler at full power.
	memRiseShare = 0.92
	memOffsetC   = 3.0
	// thermalGainPerC is how hard the firmware sheds power per °C of excess temperature, as a
	// share of the top limit.
	thermalGainPerC = 0.1
	// instantNoise is the half-width of the noise on the instant power reading.
	instantNoise = 0.015
)

// lag returns the share of the gap a first-order lag with time constant tau closes in dt.
func lag(dtS, tauS float64) float64 { return 1 - math.Exp(-dtS/tauS) }

// stepFactors are the lag factors for one step of a given length, computed once. pick draws
// the step's demand at one of its substeps, chosen from the seed, rather than at its first (a
// fleet's coarse step, see Options.Step).
type stepFactors struct {
	dtS, power, thermal, memThermal float64
	pick                            bool
	// powerMean is the share of the gap the power lag closes on average over the step, which
	// a coarse step draws for the whole step (its end value would under-count every cut).
	powerMean float64
}

var (
	fineStep   = newStepFactors(substepS)
	coarseStep = newStepFactors(substepS * coarseSteps)
)

func newStepFactors(dtS float64) stepFactors {
	return stepFactors{dtS: dtS, power: lag(dtS, powerTauS), thermal: lag(dtS, thermalTauS), memThermal: lag(dtS, memThermalTauS)}
}

// samplingPeriodUs is the sampling period NVML reports with encoder and decoder utilisation.
const samplingPeriodUs = 167000

// dgxBuses are the PCI buses of the eight GPUs in a DGX H100, which the fleet reuses per domain.
var dgxBuses = [8]uint32{0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb}

// GPU is one simulated device; it implements nvml.Device.
type GPU struct {
	unmodelledDevice
	fleet *Fleet
	index int

	uuid, serial       string
	busID, busIDLegacy string
	pci                nvml.PciInfo
	memoryShare        float64 // per-GPU spread of the trace's memory footprint

	lost atomic.Bool

	mu      sync.Mutex // guards everything below
	step    int64      // substeps simulated since the fleet started
	demandW float64
	drawnW  float64
	capW    float64 // the limit the last step ran under: bound, or lower when hot
	// allowW is the power the firmware's controller lets the board draw: it follows capW with
	// the ~100 ms lag, down from what the board draws when the cap falls below it. The demand's
	// own surges are not lagged: drawn = min(demand, allowW).
	allowW float64
	// boundW is the requested limit the firmware enforces now; a write binds pendingW at
	// substep pendingStep (-1: none), after the write's latency.
	boundW      float64
	pendingW    float64
	pendingStep int64
	writes      int64 // limit writes so far, which index the latency draws
	// counterPhase is the substep within each 100 ms at which this GPU's power counters update;
	// heldW is the instant power reading taken at the last update, heldStep when.
	counterPhase int64
	heldW        float64
	heldStep     int64
	smooth       smoothing // firmware power smoothing, on boards that have it
	clockMHz     float64
	tempC        float64
	memTempC     float64
	ambientC     float64
	energyJ      float64
	workS        float64
	requestedW   float64
	overrideW    float64
	marks        [averageMarks + 1]float64 // energy at the last 100 ms boundaries, a ring
	markHead     int                       // index of the newest mark

	eccCorrected   uint64
	eccUncorrected uint64

	health      health
	gpmCounters gpmCounters
	mig         migState
	procs       []Process
	nvlink      nvlinkState
	// nvlinkSettled: the link counters are up to date for the GetFieldValues call in progress.
	nvlinkSettled bool

	// clockShare is the last share of its demand a capped GPU could draw, clockCbrt its cube
	// root: a capped GPU whose demand and draw hold still keeps its clock without a Cbrt.
	clockShare, clockCbrt float64
	// instantKey and sampleKey are the noise keys of the instant reading's and a coarse
	// step's demand sample (noise.key).
	instantKey, sampleKey uint64
	// cycleW is the trace's day cycle at second cycleSec (a coarse step's, step.go).
	cycleSec int64
	cycleW   float64
}

func newGPU(f *Fleet, i int) *GPU {
	n := noise(f.seed)
	m := &f.model
	g := &GPU{
		fleet:       f,
		index:       i,
		uuid:        uuidOf(n, i),
		serial:      fmt.Sprintf("%013d", 1_650_000_000_000+n.hash(streamIdentity, i, 1)%100_000_000_000),
		memoryShare: 0.97 + 0.03*n.unit(streamMemory, i, 0),
		ambientC:    defaultAmbientC + 1.5*n.signed(streamAmbient, i, 0),
		requestedW:  m.DefaultLimitW,
		boundW:      m.DefaultLimitW,
		pendingStep: -1,
		cycleSec:    -1,
		instantKey:  n.key(streamInstant, i),
		sampleKey:   n.key(streamDemandSample, i),
		// The counters of GPUs on one board do not update together.
		counterPhase: int64(n.hash(streamCounterPhase, i, 0) % markEvery),
	}
	g.unmodelledDevice = unmodelledDevice{g}
	domain, bus := uint32(i/len(dgxBuses)), dgxBuses[i%len(dgxBuses)]
	g.busID = fmt.Sprintf(nvml.DEVICE_PCI_BUS_ID_FMT, domain, bus, 0)
	g.busIDLegacy = fmt.Sprintf(nvml.DEVICE_PCI_BUS_ID_LEGACY_FMT, domain, bus, 0)
	g.pci = nvml.PciInfo{Domain: domain, Bus: bus, PciDeviceId: m.PCIDeviceID, PciSubSystemId: m.PCISubsystemID}
	copyCString(g.pci.BusId[:], g.busID)
	copyCString(g.pci.BusIdLegacy[:], g.busIDLegacy)

	// The fleet starts as if it had been running its trace for a while, so a simulation has no
	// cold-start transient: power settled on the first demand, temperatures on the last
	// minute's mean, the 1 s average already full.
	g.demandW = m.clampDemand(f.trace.Demand(i, 0))
	g.smooth.presets = smoothingPresets
	g.capW = g.boundLimitW()
	g.allowW = g.capW
	g.drawnW = min(g.demandW, g.capW)
	// The reading of the last counter update at or before the start.
	g.heldW, g.heldStep = g.drawnW, g.counterPhase
	if g.heldStep > 0 {
		g.heldStep -= markEvery
	}
	g.clockMHz = g.clockFor(g.demandW, g.drawnW, g.allowW)
	warmW := g.warmUpW()
	g.tempC = g.ambientC + m.ThermalResistanceCPerW*warmW
	g.memTempC = g.memSteadyC(warmW)
	for k := range g.marks {
		g.marks[k] = -float64(averageMarks-k) * g.drawnW * substepS * markEvery
	}
	g.markHead = averageMarks
	return g
}

// warmUpW is the mean power the GPU drew over the minute before the fleet started, which sets
// its starting temperature: a training GPU starts warm even if it starts in a communication
// phase.
func (g *GPU) warmUpW() float64 {
	const samples = 600
	m := &g.fleet.model
	sum := 0.0
	for k := range samples {
		demand := m.clampDemand(g.fleet.trace.Demand(g.index, -time.Duration(samples-k)*100*time.Millisecond))
		sum += min(demand, g.enforcedW())
	}
	return sum / samples
}

func uuidOf(n noise, i int) string {
	a, b := n.hash(streamIdentity, i, 0), n.hash(streamIdentity, i, 2)
	return fmt.Sprintf("GPU-%08x-%04x-%04x-%04x-%012x", a>>32, (a>>16)&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
}

func copyCString(dst []int8, s string) {
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}

// enforcedW is the limit the board reports it enforces: the requested one, or a lower
// out-of-band one.
func (g *GPU) enforcedW() float64 {
	if g.overrideW > 0 {
		return min(g.requestedW, g.overrideW)
	}
	return g.requestedW
}

// boundLimitW is the limit the firmware enforces now: enforcedW, except that a write still in
// its latency has not reached the firmware yet.
func (g *GPU) boundLimitW() float64 {
	if g.overrideW > 0 {
		return min(g.boundW, g.overrideW)
	}
	return g.boundW
}

// requestLimit sets the requested limit as a write at now does: NVML reports it at once, and
// the firmware starts to enforce it after the write's latency, from the substep that begins
// nearest to that instant. A write still pending is superseded (NVML calls on one device run one at a
// time, so the later value is the one left enforced).
func (g *GPU) requestLimit(watts float64, now time.Time) {
	latency := writeLatencyMin + time.Duration(noise(g.fleet.seed).unit(streamWriteLatency, g.index, g.writes)*float64(writeLatencySpread))
	g.writes++
	at := now.Add(latency).Sub(g.fleet.start)
	step := int64((at + substep/2) / substep)
	g.requestedW, g.pendingW, g.pendingStep = watts, watts, max(step, g.pendingStep, g.step)
}

// thermalCapW is the power the firmware allows at the current temperature: unbounded well below
// the slowdown temperature, and near the slowdown point the power that holds it there.
func (g *GPU) thermalCapW() float64 {
	m := &g.fleet.model
	holdW := (m.SlowdownTempC - g.ambientC) / m.ThermalResistanceCPerW
	return max(m.IdleW, holdW+thermalGainPerC*m.MaxLimitW*(m.SlowdownTempC-g.tempC))
}

func (g *GPU) memSteadyC(drawnW float64) float64 {
	return g.ambientC + memOffsetC + memRiseShare*g.fleet.model.ThermalResistanceCPerW*drawnW
}

// clockFor is the SM clock: low when idle, the maximum when busy and unconstrained, and scaled by
// the cube root of the share of its demand a capped GPU may draw (dynamic power goes roughly
// with the clock cubed, since voltage follows the clock).
func (g *GPU) clockFor(demandW, drawnW, capW float64) float64 {
	m := &g.fleet.model
	switch {
	case demandW <= m.busyThresholdW():
		return float64(m.IdleSMClockMHz)
	case demandW <= capW:
		return float64(m.MaxSMClockMHz)
	}
	if share := min(1, drawnW/demandW); share != g.clockShare {
		g.clockShare, g.clockCbrt = share, math.Cbrt(share)
	}
	mhz := float64(m.MaxSMClockMHz) * g.clockCbrt
	return max(float64(m.IdleSMClockMHz), mhz)
}

// advance brings the state up to now, in whole substeps. Time going backwards changes nothing.
func (g *GPU) advance(now time.Time) {
	target := int64(now.Sub(g.fleet.start) / substep)
	for target-g.step > fineTail+coarseSteps {
		g.integrate(coarseSteps, &coarseStep)
	}
	if g.fleet.stepN > 1 {
		g.advanceCoarse(target)
		return
	}
	for g.step < target {
		g.integrate(1, &fineStep)
	}
}

// integrate runs one step of n substeps; it must not allocate, as it runs for every 10 ms of
// every GPU.
func (g *GPU) integrate(n int64, s *stepFactors) {
	m := &g.fleet.model
	if g.pendingStep >= 0 && g.step >= g.pendingStep {
		g.boundW, g.pendingStep = g.pendingW, -1
	}
	at := g.step
	if s.pick && n > 1 {
		h := keyed(g.sampleKey, g.step)
		if n == markEvery {
			h %= markEvery // the fleet's whole step: a constant divisor costs a multiply, not a divide
		} else {
			h %= uint64(n)
		}
		at += int64(h)
	}
	demand := m.clampDemand(g.traceDemand(at, s.pick))
	if h := g.fleet.onDemand; h != nil {
		h(g.index, demand, s.dtS)
	}
	capW := min(g.boundLimitW(), g.thermalCapW())
	// The power controller closes on the cap with its lag; a cap under what the board draws
	// brings the draw down from where it is, a cap over it holds at once.
	var ceilingW float64
	if s.pick {
		// A coarse step draws the lag's mean over it, from where the draw starts.
		fromW := min(g.allowW, max(capW, g.drawnW))
		g.allowW = fromW + s.power*(capW-fromW)
		ceilingW = fromW + s.powerMean*(capW-fromW)
	} else {
		g.allowW += s.power * (capW - g.allowW)
		g.allowW = min(g.allowW, max(capW, g.drawnW))
		ceilingW = g.allowW
	}
	g.drawnW = min(demand, ceilingW)
	if g.smooth.on {
		g.drawnW, ceilingW = g.smooth.shape(g.drawnW, ceilingW, g.boundLimitW(), g.step, n, s.dtS)
	}
	g.energyJ += g.drawnW * s.dtS
	g.tempC += s.thermal * (g.ambientC + m.ThermalResistanceCPerW*g.drawnW - g.tempC)
	g.memTempC += s.memThermal * (g.memSteadyC(g.drawnW) - g.memTempC)
	g.clockMHz = g.clockFor(demand, g.drawnW, ceilingW)
	g.workS += m.utilization(demand) * g.clockMHz / float64(m.MaxSMClockMHz) * s.dtS
	g.demandW, g.capW = demand, capW
	g.health.accrue(g.modelReasons(), g.step, n)
	g.gpmAccrue(demand, s.dtS)
	g.step += n
	if n == 1 {
		if (g.step-g.counterPhase)%markEvery == 0 {
			g.mark(g.step)
		}
		return
	}
	// The counter updates that fell inside a longer step, each at its own substep.
	first := g.step - n + 1
	d := (g.counterPhase - first) % markEvery
	if d < 0 {
		d += markEvery
	}
	for at := first + d; at <= g.step; at += markEvery {
		g.mark(at)
	}
}

// mark is the counter update at substep at, within the step just run: the energy then (the
// step's draw is constant, so the energy at an earlier substep of it is exact) and the instant
// reading.
func (g *GPU) mark(at int64) {
	e := g.energyJ
	if at < g.step {
		e -= g.drawnW * float64(g.step-at) * substepS
	}
	g.markHead = (g.markHead + 1) % len(g.marks)
	g.marks[g.markHead] = e
	g.heldW, g.heldStep = g.sampleInstantW(at), at
}

// averageW is the mean drawn power over the last full second of 100 ms marks.
func (g *GPU) averageW() float64 {
	oldest := g.marks[(g.markHead+1)%len(g.marks)]
	return (g.marks[g.markHead] - oldest) / (substepS * markEvery * averageMarks)
}

// sampleInstantW is the drawn power with a little seeded measurement noise, as the counter
// update at substep at records it.
func (g *GPU) sampleInstantW(at int64) float64 {
	if g.fleet.stepN > 1 {
		// The same triangular noise from the two halves of one draw, at half the cost: at a
		// coarse step the counter updates are a large share of the physics (step.go).
		h := keyed(g.instantKey, 2*at)
		e := instantNoise * (float64(h>>32)*0x1p-32 + float64(h&0xffffffff)*0x1p-32 - 1)
		return g.drawnW * (1 + e)
	}
	e := instantNoise * (unitOf(keyed(g.instantKey, 2*at)) + unitOf(keyed(g.instantKey, 2*at+1)) - 1)
	return g.drawnW * (1 + e)
}

// instantW is what FI_DEV_POWER_INSTANT reports: the reading of the last counter update, held
// until the next one about 100 ms later.
func (g *GPU) instantW() float64 { return g.heldW }

func (g *GPU) workload() workload {
	if w, ok := g.fleet.trace.(workloadTrace); ok {
		return w.workload(g.index, g.elapsed())
	}
	return defaultWorkload
}

func (g *GPU) elapsed() time.Duration { return time.Duration(g.step) * substep }

func (g *GPU) busy() bool { return g.demandW > g.fleet.model.busyThresholdW() }

// reasons are the clock-event reasons of the last step.
func (g *GPU) reasons() uint64 { return g.modelReasons() | g.health.injected(g.step) }

// modelReasons are the clock-event reasons of the last step that the model itself sets, without
// the injected ones.
func (g *GPU) modelReasons() uint64 {
	m := &g.fleet.model
	var r uint64
	if !g.busy() {
		r |= nvml.ClocksEventReasonGpuIdle
	}
	enforced := g.boundLimitW()
	if g.demandW > enforced {
		r |= nvml.ClocksEventReasonSwPowerCap
	}
	if g.capW < min(g.demandW, enforced) {
		r |= nvml.ClocksEventReasonSwThermalSlowdown
	}
	if g.tempC >= m.HWSlowdownTempC {
		r |= nvml.ClocksThrottleReasonHwThermalSlowdown
	}
	return r
}

// GPUState is the true state of a simulated GPU at its last substep, for tests and reports.
type GPUState struct {
	Time               time.Time // simulated instant the values describe
	DemandW            float64   // what the trace asks for
	DrawnW             float64   // what the board draws now
	InstantPowerW      float64   // what FI_DEV_POWER_INSTANT reports: the last counter update's reading
	AveragePowerW      float64   // the 1 s average GetPowerUsage reports
	RequestedLimitW    float64   // set through SetPowerManagementLimit
	OverrideLimitW     float64   // out-of-band limit; 0 when none
	EnforcedLimitW     float64   // min(requested, override)
	SMClockMHz         float64
	TemperatureC       float64
	MemoryTemperatureC float64
	AmbientC           float64
	EnergyJ            float64 // since the fleet started
	// WorkSeconds is the work done since the fleet started, in seconds of fully busy GPU at the
	// maximum clock; comparing it across runs says what a capping policy cost in throughput.
	WorkSeconds float64
	Utilization float64 // busy fraction, 0..1
	Reasons     uint64  // clock-event reasons, nvml.ClocksEventReason* bits
	Lost        bool
}

// State advances the GPU to the clock's now and returns its true state; it works before Init
// and on a lost GPU.
func (g *GPU) State() GPUState {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.fleet.clock.Now())
	return GPUState{
		Time:               g.fleet.start.Add(g.elapsed()),
		DemandW:            g.demandW,
		DrawnW:             g.drawnW,
		InstantPowerW:      g.instantW(),
		AveragePowerW:      g.averageW(),
		RequestedLimitW:    g.requestedW,
		OverrideLimitW:     g.overrideW,
		EnforcedLimitW:     g.enforcedW(),
		SMClockMHz:         g.clockMHz,
		TemperatureC:       g.tempC,
		MemoryTemperatureC: g.memTempC,
		AmbientC:           g.ambientC,
		EnergyJ:            g.energyJ,
		WorkSeconds:        g.workS,
		Utilization:        g.fleet.model.utilization(g.demandW),
		Reasons:            g.reasons(),
		Lost:               g.lost.Load(),
	}
}
