package sim

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPM (GPU performance monitoring, Hopper and later) reports activity between two samples. The
// sim integrates, on every step, what the demand implies: any kernel running keeps the
// graphics engine busy (the utilisation), and the harder the GPU works (its demand between idle
// and the top limit) the more its SMs and tensor pipes are busy; a low phase, such as a training
// step's all-reduce, moves bytes over NVLink instead. A sample is a copy of these integrals.

// nvlinkPeakMiBps is the NVLink bandwidth per direction a GPU reaches in a pure all-reduce
// (NVLink 4: 450 GB/s per direction).
const nvlinkPeakMiBps = 450e9 / (1 << 20)

// gpmCounters are integrals over time (seconds of activity) since the fleet started.
type gpmCounters struct {
	busyS     float64 // any kernel: the graphics engine
	smS       float64 // SMs busy
	tensorS   float64 // any tensor pipe
	dramS     float64 // memory bandwidth in use
	decoderS  float64
	pcieRxMiB float64
	pcieTxMiB float64
	nvlinkMiB float64 // each direction

	// Steps are held and integrated together every gpmEvery steps, at their mean demand: the
	// integrals cost as much as the rest of a step, and GPM is read a second or more apart.
	heldS, heldDemandWS float64
	flushAt             int64 // step at which the held steps are integrated
}

// gpmEvery is how many steps the GPM integrals hold before integrating them (100 ms at the
// 10 ms step).
const gpmEvery = 10

// gpmAccrue adds one step of dtS seconds at demandW to the GPM integrals, every gpmEvery steps;
// it runs on every step, so it does not allocate.
func (g *GPU) gpmAccrue(demandW, dtS float64) {
	c := &g.gpmCounters
	c.heldS += dtS
	c.heldDemandWS += demandW * dtS
	if g.step >= c.flushAt {
		g.gpmFlush()
	}
}

// gpmFlush integrates the held steps, at their mean demand and the trace's workload now.
func (g *GPU) gpmFlush() {
	c := &g.gpmCounters
	if c.heldS > 0 {
		if demandW := c.heldDemandWS / c.heldS; g.fleet.model.utilization(demandW) > 0 {
			c.accrue(&g.fleet.model, g.workload(), demandW, c.heldS)
			for _, d := range g.mig.instances {
				if share := g.instanceShare(d); share > 0 {
					d.gpm.accrue(&g.fleet.model, g.workload(), demandW, c.heldS*share)
				}
			}
		}
	}
	// A coarse physics step holds as many steps as the fine step does (step.go).
	c.heldS, c.heldDemandWS, c.flushAt = 0, 0, g.step+gpmEvery*g.fleet.stepN
}

func (c *gpmCounters) accrue(m *Model, w workload, demandW, dtS float64) {
	u := m.utilization(demandW)
	k := min(1, max(0, (demandW-m.IdleW)/(m.MaxLimitW-m.IdleW))) // how hard the GPU works
	c.busyS += u * dtS
	c.smS += u * (0.15 + 0.85*k) * dtS
	c.tensorS += u * 0.9 * k * k * dtS
	c.dramS += u * w.memoryActivity * dtS
	c.decoderS += u * w.decoder * dtS
	c.pcieRxMiB += u * w.rxKBps / 1024 * dtS
	c.pcieTxMiB += u * w.txKBps / 1024 * dtS
	c.nvlinkMiB += u * (1 - k) * nvlinkPeakMiBps * dtS
}

// gpmSupported reports whether the model has GPM: Hopper and later.
func (m *Model) gpmSupported() bool { return m.Architecture >= nvml.DEVICE_ARCH_HOPPER }

// GpmSample is a GPM sample of the simulated fleet.
type GpmSample struct {
	unmodelledGpmSample
	fleet *Fleet

	gpu    *GPU       // nil until taken
	inst   *MigDevice // the GPU instance sampled, nil for the whole GPU
	step   int64
	counts gpmCounters
	// now is the activity per second at the instant of the sample, for two samples taken at
	// the same instant (the simulated clock has not moved).
	now   gpmCounters
	freed bool
}

// GpmSampleAlloc allocates a sample for GpmSampleGet.
func (f *Fleet) GpmSampleAlloc() (nvml.GpmSample, nvml.Return) {
	if ret := f.ready(); ret != nvml.SUCCESS {
		return nil, ret
	}
	s := &GpmSample{unmodelledGpmSample: unmodelledGpmSample{f}, fleet: f}
	return s, nvml.SUCCESS
}

// GpmSampleFree frees a sample from GpmSampleAlloc.
func (f *Fleet) GpmSampleFree(s nvml.GpmSample) nvml.Return {
	if s == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return s.Free()
}

func (s *GpmSample) Free() nvml.Return {
	if s.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	s.freed = true
	return nvml.SUCCESS
}

// Get takes the sample on dev.
func (s *GpmSample) Get(dev nvml.Device) nvml.Return {
	g, ok := dev.(*GPU)
	if !ok || g.fleet != s.fleet {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return g.GpmSampleGet(s)
}

// GpmQueryDeviceSupport says whether the GPU has GPM, with SUCCESS either way, as NVML does.
func (g *GPU) GpmQueryDeviceSupport() (nvml.GpmSupport, nvml.Return) {
	if ret := g.ready(); ret != nvml.SUCCESS {
		return nvml.GpmSupport{}, ret
	}
	var supported uint32
	if g.fleet.model.gpmSupported() {
		supported = 1
	}
	return nvml.GpmSupport{Version: nvml.GPM_SUPPORT_VERSION, IsSupportedDevice: supported}, nvml.SUCCESS
}

// GpmSampleGet takes sample (from this fleet's GpmSampleAlloc) on the GPU now.
func (g *GPU) GpmSampleGet(sample nvml.GpmSample) nvml.Return {
	s, ok := sample.(*GpmSample)
	if !ok || s.fleet != g.fleet || s.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if !g.fleet.model.gpmSupported() {
		if ret := g.ready(); ret != nvml.SUCCESS {
			return ret
		}
		return nvml.ERROR_NOT_SUPPORTED
	}
	if ret := g.lockNow(); ret != nvml.SUCCESS {
		return ret
	}
	defer g.mu.Unlock()
	g.fillSample(s, nil)
	return nvml.SUCCESS
}

// fillSample takes s of the whole GPU (inst nil) or of one GPU instance, after integrating the
// held steps; the caller holds g.mu.
func (g *GPU) fillSample(s *GpmSample, inst *MigDevice) {
	g.gpmFlush()
	counts, share := g.gpmCounters, 1.0
	if inst != nil {
		counts, share = inst.gpm, g.instanceShare(inst)
	}
	s.gpu, s.inst, s.step, s.counts = g, inst, g.step, counts
	s.now = gpmCounters{}
	s.now.accrue(&g.fleet.model, g.workload(), g.demandW, share)
}

// GpmMetricsGet computes mg.Metrics[:mg.NumMetrics] between mg.Sample1 and the later
// mg.Sample2, both taken on the same GPU. Utilisations are percentages, throughputs MiB/s, as
// NVML reports them; a metric the sim does not model answers ERROR_NOT_SUPPORTED in its own
// NvmlReturn.
func (f *Fleet) GpmMetricsGet(mg *nvml.GpmMetricsGetType) nvml.Return {
	if ret := f.ready(); ret != nvml.SUCCESS {
		return ret
	}
	if mg == nil || mg.NumMetrics > uint32(len(mg.Metrics)) {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	s1, ok1 := mg.Sample1.(*GpmSample)
	s2, ok2 := mg.Sample2.(*GpmSample)
	if !ok1 || !ok2 || s1.fleet != f || s2.fleet != f || s1.gpu == nil || s1.gpu != s2.gpu || s1.inst != s2.inst || s2.step < s1.step {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	mg.Version = nvml.GPM_METRICS_GET_VERSION
	dt := float64(s2.step-s1.step) * substepS
	c1, c2 := &s1.counts, &s2.counts
	if dt <= 0 {
		c1, c2, dt = &gpmCounters{}, &s2.now, 1
	}
	rate := func(a, b float64) float64 { return (b - a) / dt }
	pct := func(a, b float64) float64 { return 100 * min(1, max(0, rate(a, b))) }
	sm := pct(c1.smS, c2.smS)
	tensor := pct(c1.tensorS, c2.tensorS)
	for i := range mg.Metrics[:mg.NumMetrics] {
		m := &mg.Metrics[i]
		m.NvmlReturn = uint32(nvml.SUCCESS)
		switch nvml.GpmMetricId(m.MetricId) {
		case nvml.GPM_METRIC_GRAPHICS_UTIL:
			m.Value = pct(c1.busyS, c2.busyS)
		case nvml.GPM_METRIC_SM_UTIL:
			m.Value = sm
		case nvml.GPM_METRIC_SM_OCCUPANCY:
			m.Value = 0.6 * sm
		case nvml.GPM_METRIC_ANY_TENSOR_UTIL:
			m.Value = tensor
		case nvml.GPM_METRIC_HMMA_TENSOR_UTIL:
			m.Value = 0.85 * tensor
		case nvml.GPM_METRIC_IMMA_TENSOR_UTIL:
			m.Value = 0.05 * tensor
		case nvml.GPM_METRIC_DFMA_TENSOR_UTIL, nvml.GPM_METRIC_DMMA_TENSOR_UTIL:
			m.Value = 0
		case nvml.GPM_METRIC_FP64_UTIL:
			m.Value = 0.01 * sm
		case nvml.GPM_METRIC_FP32_UTIL:
			m.Value = 0.25 * sm
		case nvml.GPM_METRIC_FP16_UTIL:
			m.Value = 0.15 * sm
		case nvml.GPM_METRIC_INTEGER_UTIL:
			m.Value = 0.2 * sm
		case nvml.GPM_METRIC_DRAM_BW_UTIL:
			m.Value = pct(c1.dramS, c2.dramS)
		case nvml.GPM_METRIC_PCIE_RX_PER_SEC:
			m.Value = rate(c1.pcieRxMiB, c2.pcieRxMiB)
		case nvml.GPM_METRIC_PCIE_TX_PER_SEC:
			m.Value = rate(c1.pcieTxMiB, c2.pcieTxMiB)
		case nvml.GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, nvml.GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC:
			m.Value = rate(c1.nvlinkMiB, c2.nvlinkMiB)
		case nvml.GPM_METRIC_NVDEC_0_UTIL, nvml.GPM_METRIC_NVDEC_1_UTIL, nvml.GPM_METRIC_NVDEC_2_UTIL,
			nvml.GPM_METRIC_NVDEC_3_UTIL, nvml.GPM_METRIC_NVDEC_4_UTIL, nvml.GPM_METRIC_NVDEC_5_UTIL,
			nvml.GPM_METRIC_NVDEC_6_UTIL:
			m.Value = pct(c1.decoderS, c2.decoderS) // the decoders share the stream evenly
		case nvml.GPM_METRIC_NVJPG_0_UTIL, nvml.GPM_METRIC_NVJPG_1_UTIL, nvml.GPM_METRIC_NVJPG_2_UTIL,
			nvml.GPM_METRIC_NVJPG_3_UTIL, nvml.GPM_METRIC_NVJPG_4_UTIL, nvml.GPM_METRIC_NVJPG_5_UTIL,
			nvml.GPM_METRIC_NVJPG_6_UTIL, nvml.GPM_METRIC_NVOFA_0_UTIL:
			m.Value = 0 // present (7 NVJPG, 1 NVOFA as on Hopper), and no trace uses them
		default:
			m.Value = 0
			m.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
		}
	}
	return nvml.SUCCESS
}
