// Package sim is a fleet of simulated GPUs behind go-nvml's nvml.Interface, so that everything
// above the GPU backend runs the same code on a laptop as on a GPU node. Each GPU is a small
// physical model (power lag, 1 s power average, clocks, temperature, energy, work done) driven by
// a demand trace and an injected clock; it advances lazily to the clock's time on every call.
//
// Methods of nvml.Interface, nvml.Device and nvml.EventSet that the package does not model
// answer ERROR_NOT_SUPPORTED, as NVML does for what a board cannot do (see unmodelled.go).
package sim

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
)

// MaxGPUs is the largest fleet New builds.
const MaxGPUs = 64

// DefaultDriverVersion is the driver version the fleet reports unless Options says otherwise.
const DefaultDriverVersion = "570.133.20"

// cudaDriverVersion is what SystemGetCudaDriverVersion reports (CUDA 12.8, which drivers 570
// ship).
const cudaDriverVersion = 12080

// Options configures a simulated fleet.
type Options struct {
	Model string // A100, H100, H200, B200
	Count int    // GPUs, 1..MaxGPUs
	// Trace is one of TraceNames or a path ending in .csv.
	Trace string
	// Seed makes UUIDs, serials, traces and noise reproducible.
	Seed int64
	// Clock drives the simulation; nil means the wall clock.
	Clock clock.Clock
	// DriverVersion is reported by SystemGetDriverVersion; empty means DefaultDriverVersion.
	DriverVersion string
	// StateFile, when set, is the device-state file: the GPUs start with the limits it holds
	// and the fleet keeps it up to date while initialised (see statefile.go).
	StateFile string
	// FaultFile, when set, is a file of NVML faults to inject, re-read when it changes.
	FaultFile string
	// Log receives the device files' messages; nil discards them.
	Log *slog.Logger
	// Step is the physics' time step: 0 means 10 ms, the step every device-facing use keeps
	// (the agent, simulate). A fleet simulation of many nodes may take a coarser one, a
	// multiple of 10 ms up to MaxStep, trading fidelity below the step for time (step.go).
	Step time.Duration
	// OnDemand, when set, is called on every physics step of every GPU with the demand the
	// step ran at (kept physical) and the step's length, so that a caller can integrate what
	// the same demand does under other limits (the fleet's closed-form baselines). It runs
	// with the GPU locked, so it must not call the fleet.
	OnDemand func(gpu int, demandW, dtS float64)

	// manualFiles leaves polling the fault file and writing the state file to the tests.
	manualFiles bool
	// MIG is the MIG layout of every GPU ("7x1g.10gb"), or one per GPU separated by ";"; empty
	// means MIG off (see ParseMIGLayouts).
	MIG string
}

// Fleet is a set of simulated GPUs that implements nvml.Interface. It is safe for concurrent
// use: each GPU has its own lock.
type Fleet struct {
	unmodelledInterface

	model  Model
	trace  Trace
	clock  clock.Clock
	start  time.Time
	seed   int64
	driver string
	gpus   []*GPU

	refs atomic.Int32 // Init calls not yet matched by Shutdown

	mu   sync.Mutex // guards sets
	sets map[*EventSet]struct{}

	// stepN is the physics step in substeps (1: the 10 ms step); steps holds the lag factors of
	// a step of each length up to it, gridPhase aligns its steps on the clock (step.go).
	stepN     int64
	steps     []stepFactors
	gridPhase int64
	cycle     cycleTrace // the trace's day cycle, taken once a second at a coarse step
	onDemand  func(gpu int, demandW, dtS float64)

	files  *deviceFiles             // nil without a state or fault file
	active atomic.Pointer[faultSet] // the error and hang faults in force; nil when none
	sleep  func(time.Duration)      // how a hang fault waits

	unmodelledCalls unmodelledCalls // handle calls answered "not supported" (unmodelled.go)
}

var (
	_ nvml.Interface = (*Fleet)(nil)
	_ nvml.Device    = (*GPU)(nil)
	_ nvml.EventSet  = (*EventSet)(nil)
)

// New builds a fleet after checking its options. Its simulated time starts at the clock's now.
func New(o Options) (*Fleet, error) {
	if o.Count < 1 || o.Count > MaxGPUs {
		return nil, fmt.Errorf("simulated GPU count %d is out of range: must be 1..%d", o.Count, MaxGPUs)
	}
	m, err := LookupModel(o.Model)
	if err != nil {
		return nil, fmt.Errorf("choosing the simulated GPU model: %w", err)
	}
	if strings.TrimSpace(o.Trace) == "" {
		return nil, fmt.Errorf("choosing the simulated workload: no trace given: use one of %s, or a path ending in .csv",
			strings.Join(TraceNames(), ", "))
	}
	tr, err := NewTrace(o.Trace, m, o.Count, o.Seed)
	if err != nil {
		return nil, fmt.Errorf("choosing the simulated workload: %w", err)
	}
	layouts, migOn, err := ParseMIGLayouts(m.Name, o.MIG, o.Count)
	if err != nil {
		return nil, fmt.Errorf("choosing the simulated MIG layout: %w", err)
	}
	stepN, err := stepSubsteps(o.Step)
	if err != nil {
		return nil, err
	}
	clk := o.Clock
	if clk == nil {
		clk = clock.Real()
	}
	driver := o.DriverVersion
	if driver == "" {
		driver = DefaultDriverVersion
	}
	f := &Fleet{
		model:  m,
		trace:  tr,
		clock:  clk,
		start:  clk.Now(),
		seed:   o.Seed,
		driver: driver,
		sets:   map[*EventSet]struct{}{},
		sleep:  time.Sleep,
	}
	f.setStep(stepN)
	f.onDemand = o.OnDemand
	f.unmodelledInterface = unmodelledInterface{f}
	for i := range o.Count {
		g := newGPU(f, i)
		if migOn[i] {
			g.setMIG(true, layouts[i])
		}
		f.gpus = append(f.gpus, g)
	}
	if err := f.openFiles(o); err != nil {
		return nil, err
	}
	return f, nil
}

// Model returns the fleet's GPU model.
func (f *Fleet) Model() Model { return f.model }

// Start returns the instant the fleet's simulated time began; traces see time since then.
func (f *Fleet) Start() time.Time { return f.start }

// Count returns the number of GPUs; unlike DeviceGetCount it works before Init.
func (f *Fleet) Count() int { return len(f.gpus) }

// GPU returns simulated device i, the same value DeviceGetHandleByIndex returns. It panics when i
// is out of range, as indexing would.
func (f *Fleet) GPU(i int) *GPU {
	if i < 0 || i >= len(f.gpus) {
		panic(fmt.Sprintf("sim: GPU index %d out of range 0..%d", i, len(f.gpus)-1))
	}
	return f.gpus[i]
}

// InjectXID raises an XID error on GPU gpu: every event set it is registered with for
// EventTypeXidCriticalError receives it.
func (f *Fleet) InjectXID(gpu int, xid uint64) {
	g := f.GPU(gpu)
	f.deliver(nvml.EventData{Device: g, EventType: nvml.EventTypeXidCriticalError, EventData: xid})
}

// InjectECC adds to GPU gpu's volatile ECC error counters and raises the matching single- and
// double-bit ECC events.
func (f *Fleet) InjectECC(gpu int, corrected, uncorrected uint64) {
	g := f.GPU(gpu)
	g.mu.Lock()
	g.eccCorrected += corrected
	g.eccUncorrected += uncorrected
	g.mu.Unlock()
	if corrected > 0 {
		f.deliver(nvml.EventData{Device: g, EventType: nvml.EventTypeSingleBitEccError})
	}
	if uncorrected > 0 {
		f.deliver(nvml.EventData{Device: g, EventType: nvml.EventTypeDoubleBitEccError})
	}
}

// SetLost makes GPU gpu fall off the bus (every device call returns ERROR_GPU_IS_LOST) or come
// back.
func (f *Fleet) SetLost(gpu int, lost bool) { f.GPU(gpu).lost.Store(lost) }

// SetLimitOverride sets an out-of-band power limit on GPU gpu, as a BMC or another agent would:
// the enforced limit becomes min(requested, override). Zero or less clears it.
func (f *Fleet) SetLimitOverride(gpu int, watts float64) {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(f.clock.Now())
	g.overrideW = max(0, watts)
}

// SetAmbient sets the inlet air temperature of GPU gpu, e.g. to drive it into thermal slowdown.
func (f *Fleet) SetAmbient(gpu int, celsius float64) {
	g := f.GPU(gpu)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(f.clock.Now())
	g.ambientC = celsius
}

func (f *Fleet) initialized() bool { return f.refs.Load() > 0 }

// Init initialises the library; calls are counted, as NVML counts them.
func (f *Fleet) Init() nvml.Return {
	if f.refs.Add(1) == 1 {
		f.startFiles()
	}
	return nvml.SUCCESS
}

// Shutdown undoes one Init.
func (f *Fleet) Shutdown() nvml.Return {
	for {
		n := f.refs.Load()
		if n <= 0 {
			return nvml.ERROR_UNINITIALIZED
		}
		if f.refs.CompareAndSwap(n, n-1) {
			if n == 1 {
				f.stopFiles()
			}
			return nvml.SUCCESS
		}
	}
}

// ErrorString describes ret.
func (f *Fleet) ErrorString(ret nvml.Return) string { return ret.Error() }

func (f *Fleet) DeviceGetCount() (int, nvml.Return) {
	if !f.initialized() {
		return 0, nvml.ERROR_UNINITIALIZED
	}
	return len(f.gpus), nvml.SUCCESS
}

func (f *Fleet) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if !f.initialized() {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	if i < 0 || i >= len(f.gpus) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return f.handle(f.gpus[i])
}

func (f *Fleet) DeviceGetHandleByUUID(uuid string) (nvml.Device, nvml.Return) {
	if !f.initialized() {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	for _, g := range f.gpus {
		if g.uuid == uuid {
			return f.handle(g)
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

func (f *Fleet) DeviceGetHandleByPciBusId(busID string) (nvml.Device, nvml.Return) {
	if !f.initialized() {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	for _, g := range f.gpus {
		if strings.EqualFold(busID, g.busID) || strings.EqualFold(busID, g.busIDLegacy) {
			return f.handle(g)
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

// handle returns g as NVML would: not at all once it has fallen off the bus.
func (f *Fleet) handle(g *GPU) (nvml.Device, nvml.Return) {
	if g.lost.Load() {
		return nil, nvml.ERROR_GPU_IS_LOST
	}
	return g, nvml.SUCCESS
}

func (f *Fleet) SystemGetDriverVersion() (string, nvml.Return) {
	if !f.initialized() {
		return "", nvml.ERROR_UNINITIALIZED
	}
	return f.driver, nvml.SUCCESS
}

// SystemGetNVMLVersion reports the NVML version the way NVML does: CUDA major, then the driver.
func (f *Fleet) SystemGetNVMLVersion() (string, nvml.Return) {
	if !f.initialized() {
		return "", nvml.ERROR_UNINITIALIZED
	}
	return fmt.Sprintf("%d.%s", cudaDriverVersion/1000, f.driver), nvml.SUCCESS
}

func (f *Fleet) SystemGetCudaDriverVersion() (int, nvml.Return) {
	if !f.initialized() {
		return 0, nvml.ERROR_UNINITIALIZED
	}
	return cudaDriverVersion, nvml.SUCCESS
}

func (f *Fleet) SystemGetCudaDriverVersion_v2() (int, nvml.Return) {
	return f.SystemGetCudaDriverVersion()
}

func (f *Fleet) EventSetCreate() (nvml.EventSet, nvml.Return) {
	if !f.initialized() {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	s := newEventSet(f)
	f.mu.Lock()
	f.sets[s] = struct{}{}
	f.mu.Unlock()
	return s, nvml.SUCCESS
}

func (f *Fleet) EventSetWait(set nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
	s, ok := set.(*EventSet)
	if !ok || s.fleet != f {
		return nvml.EventData{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return s.Wait(timeoutMs)
}

func (f *Fleet) EventSetFree(set nvml.EventSet) nvml.Return {
	s, ok := set.(*EventSet)
	if !ok || s.fleet != f {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return s.Free()
}

// deliver queues ev on every live event set its device is registered with for its type.
func (f *Fleet) deliver(ev nvml.EventData) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.sets {
		s.offer(ev)
	}
}

func (f *Fleet) forget(s *EventSet) {
	f.mu.Lock()
	delete(f.sets, s)
	f.mu.Unlock()
}
