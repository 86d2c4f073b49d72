package gpu

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// GPM (GPU performance monitoring, Hopper and later) gives what DCGM's profiling fields give,
// through NVML alone: the collector takes one GPM sample per GPU per collection (and one when
// it opens the GPU) and exports the metrics between it and the previous one. A GPU without GPM says so once, in one line for all
// such GPUs, and keeps exporting NVML's utilisation.

// gpmEngine is one capstan.gpu.activity series: the GPM metrics averaged into it (several for
// the video engines, one per engine) and the factor that turns NVML's percentages into a
// fraction.
type gpmEngine struct {
	name    string
	metrics []nvml.GpmMetricId
}

var gpmEngines = [...]gpmEngine{
	{"graphics", []nvml.GpmMetricId{nvml.GPM_METRIC_GRAPHICS_UTIL}},
	{"sm", []nvml.GpmMetricId{nvml.GPM_METRIC_SM_UTIL}},
	{"sm_occupancy", []nvml.GpmMetricId{nvml.GPM_METRIC_SM_OCCUPANCY}},
	{"tensor", []nvml.GpmMetricId{nvml.GPM_METRIC_ANY_TENSOR_UTIL}},
	{"tensor_hmma", []nvml.GpmMetricId{nvml.GPM_METRIC_HMMA_TENSOR_UTIL}},
	{"tensor_imma", []nvml.GpmMetricId{nvml.GPM_METRIC_IMMA_TENSOR_UTIL}},
	{"tensor_dfma", []nvml.GpmMetricId{nvml.GPM_METRIC_DFMA_TENSOR_UTIL}},
	{"fp64", []nvml.GpmMetricId{nvml.GPM_METRIC_FP64_UTIL}},
	{"fp32", []nvml.GpmMetricId{nvml.GPM_METRIC_FP32_UTIL}},
	{"fp16", []nvml.GpmMetricId{nvml.GPM_METRIC_FP16_UTIL}},
	{"integer", []nvml.GpmMetricId{nvml.GPM_METRIC_INTEGER_UTIL}},
	{"dram", []nvml.GpmMetricId{nvml.GPM_METRIC_DRAM_BW_UTIL}},
	{"nvdec", []nvml.GpmMetricId{
		nvml.GPM_METRIC_NVDEC_0_UTIL, nvml.GPM_METRIC_NVDEC_1_UTIL, nvml.GPM_METRIC_NVDEC_2_UTIL, nvml.GPM_METRIC_NVDEC_3_UTIL,
		nvml.GPM_METRIC_NVDEC_4_UTIL, nvml.GPM_METRIC_NVDEC_5_UTIL, nvml.GPM_METRIC_NVDEC_6_UTIL, nvml.GPM_METRIC_NVDEC_7_UTIL,
	}},
	{"nvjpg", []nvml.GpmMetricId{
		nvml.GPM_METRIC_NVJPG_0_UTIL, nvml.GPM_METRIC_NVJPG_1_UTIL, nvml.GPM_METRIC_NVJPG_2_UTIL, nvml.GPM_METRIC_NVJPG_3_UTIL,
		nvml.GPM_METRIC_NVJPG_4_UTIL, nvml.GPM_METRIC_NVJPG_5_UTIL, nvml.GPM_METRIC_NVJPG_6_UTIL, nvml.GPM_METRIC_NVJPG_7_UTIL,
	}},
	{"nvofa", []nvml.GpmMetricId{nvml.GPM_METRIC_NVOFA_0_UTIL, nvml.GPM_METRIC_NVOFA_1_UTIL}},
}

// gpmLinks are the capstan.gpu.io.throughput series: link, direction and the GPM metric (MiB/s).
var gpmLinks = [...]struct {
	link, direction string
	metric          nvml.GpmMetricId
}{
	{"pcie", "transmit", nvml.GPM_METRIC_PCIE_TX_PER_SEC},
	{"pcie", "receive", nvml.GPM_METRIC_PCIE_RX_PER_SEC},
	{"nvlink", "transmit", nvml.GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC},
	{"nvlink", "receive", nvml.GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC},
}

const bytesPerMiB = 1 << 20

// gpm is one GPU's GPM state: two samples used in turn, the metrics it asks for and where each
// series' metrics sit among them.
type gpm struct {
	supported   *sample.Series
	isSupported bool
	// undecided: the driver could not say whether the GPU has GPM (a timeout, not "not
	// supported"); it is asked again at each collection until it says.
	undecided    bool
	samples      [2]nvml.GpmSample
	latest       int                // index of the sample taken last
	havePrevious bool               // samples[latest] holds a sample to compute from
	ids          []nvml.GpmMetricId // the metrics asked for, in request order
	engine       [len(gpmEngines)]*sample.Series
	engineSlots  [len(gpmEngines)][]int // indexes in ids
	link         [len(gpmLinks)]*sample.Series
	linkSlot     [len(gpmLinks)]int
}

// openGPM asks every GPU whether it has GPM and allocates two samples for those that do. A GPU
// whose answer is "no" (or that cannot say) exports capstan.gpu.gpm.supported 0; one line says
// which GPUs lack it.
func (c *Collector) openGPM() {
	if !c.profiling {
		return // neither GPM metric is exported: nothing to sample
	}
	var without []int
	for _, d := range c.devices {
		if d.lost {
			continue
		}
		if !c.openDeviceGPM(d) && !d.gpm.undecided {
			without = append(without, d.index)
		}
	}
	if len(without) > 0 {
		c.log.Info("GPUs without GPM profiling metrics; exporting NVML utilisation for them", "gpus", without)
	}
}

// openDeviceGPM asks d whether it has GPM and, when it does, allocates its samples and takes a
// first one; it reports whether d has GPM.
func (c *Collector) openDeviceGPM(d *device) bool {
	g := &gpm{supported: d.base.With(metrics.GPUGPMSupported)}
	d.gpm = g
	return c.askGPMSupport(d, g)
}

// askGPMSupport asks d whether it has GPM and, when it does, allocates its samples and takes a
// first one. An answer that is neither yes nor "not supported" leaves it undecided, logged once.
func (c *Collector) askGPMSupport(d *device, g *gpm) bool {
	support, ret := d.dev.GpmQueryDeviceSupport()
	wasUndecided := g.undecided
	g.undecided = ret != nvml.SUCCESS && ret != nvml.ERROR_NOT_SUPPORTED && ret != nvml.ERROR_FUNCTION_NOT_FOUND
	if g.undecided {
		if !wasUndecided {
			c.log.Warn("GPU could not say whether it has GPM profiling metrics; asking again at each collection",
				"gpu", d.index, "err", ret)
		}
		return false
	}
	if ret != nvml.SUCCESS || support.IsSupportedDevice == 0 {
		if wasUndecided {
			c.log.Info("GPU without GPM profiling metrics; exporting NVML utilisation for it", "gpu", d.index)
		}
		return false
	}
	if !c.allocGPMSamples(d, g) {
		return false
	}
	if wasUndecided {
		c.log.Info("GPU has GPM profiling metrics", "gpu", d.index)
	}
	g.isSupported = true
	g.build(d.base)
	// A first sample now, so that the first collection already has an interval.
	if ret := d.dev.GpmSampleGet(g.samples[0]); ret == nvml.SUCCESS {
		g.latest, g.havePrevious = 0, true
	}
	return true
}

// reopenGPM restarts GPM on a GPU that came back: a sample from before the outage is no interval
// to compute from, and a GPU that was lost at start has none yet.
func (c *Collector) reopenGPM(d *device) {
	if !c.profiling {
		return
	}
	if d.gpm == nil {
		if !c.openDeviceGPM(d) && !d.gpm.undecided {
			c.log.Info("GPU without GPM profiling metrics; exporting NVML utilisation for it", "gpu", d.index)
		}
		return
	}
	g := d.gpm
	g.havePrevious = false
	if g.isSupported {
		if ret := d.dev.GpmSampleGet(g.samples[0]); ret == nvml.SUCCESS {
			g.latest, g.havePrevious = 0, true
		}
	}
}

func (c *Collector) allocGPMSamples(d *device, g *gpm) bool {
	for i := range g.samples {
		s, ret := c.lib.GpmSampleAlloc()
		if ret != nvml.SUCCESS {
			c.log.Warn("allocating a GPM sample; no GPM metrics for this GPU", "gpu", d.index, "err", ret)
			c.freeGPMSamples(g)
			return false
		}
		g.samples[i] = s
	}
	return true
}

func (c *Collector) freeGPMSamples(g *gpm) {
	for i, s := range g.samples {
		if s == nil {
			continue
		}
		if ret := s.Free(); ret != nvml.SUCCESS {
			c.log.Debug("freeing a GPM sample", "err", ret)
		}
		g.samples[i] = nil
	}
}

// closeGPM frees every GPU's samples.
func (c *Collector) closeGPM() {
	for _, d := range c.devices {
		if d.gpm != nil {
			c.freeGPMSamples(d.gpm)
		}
	}
}

// build lays out the request: every metric of every series once, in order.
func (g *gpm) build(base *sample.Series) {
	g.ids = make([]nvml.GpmMetricId, 0, gpmDeviceMetrics)
	add := func(id nvml.GpmMetricId) int {
		g.ids = append(g.ids, id)
		return len(g.ids) - 1
	}
	for i, e := range gpmEngines {
		g.engine[i] = base.With(metrics.GPUActivity, attribute.String(metrics.AttrGPUEngine, e.name))
		g.engineSlots[i] = make([]int, 0, len(e.metrics))
		for _, id := range e.metrics {
			g.engineSlots[i] = append(g.engineSlots[i], add(id))
		}
	}
	for i, l := range gpmLinks {
		g.link[i] = base.With(metrics.GPUIOThroughput,
			attribute.String(metrics.AttrGPULink, l.link), attribute.String(metrics.AttrIODirection, l.direction))
		g.linkSlot[i] = add(l.metric)
	}
}

// gpmDeviceMetrics is how many metrics a GPU's request holds: each engine's and each link's.
var gpmDeviceMetrics = gpmEngineMetrics() + len(gpmLinks)

func gpmEngineMetrics() int {
	n := 0
	for _, e := range gpmEngines {
		n += len(e.metrics)
	}
	return n
}

// gpmMetrics asks NVML for metrics ids between samples s1 and s2. Every GPU and GPU instance
// shares the collector's one request (477 metric slots, 19 KB), which collections, one at a
// time, fill in turn; the answer is valid until the next call.
func (c *Collector) gpmMetrics(ids []nvml.GpmMetricId, s1, s2 nvml.GpmSample) (*nvml.GpmMetricsGetType, nvml.Return) {
	if c.gpmRequest == nil {
		c.gpmRequest = new(nvml.GpmMetricsGetType)
	}
	r := c.gpmRequest
	r.Version, r.NumMetrics = nvml.GPM_METRICS_GET_VERSION, uint32(len(ids))
	r.Sample1, r.Sample2 = s1, s2
	for i, id := range ids {
		r.Metrics[i] = nvml.GpmMetric{MetricId: uint32(id)}
	}
	ret := c.lib.GpmMetricsGet(r)
	r.Sample1, r.Sample2 = nil, nil // the samples belong to their GPU
	return r, ret
}

// collectGPM takes this collection's sample and, when the previous one is there, exports the
// metrics between the two.
func (c *Collector) collectGPM(d *device, b *sample.Batch) {
	g := d.gpm
	if g == nil {
		return
	}
	if g.undecided {
		c.askGPMSupport(d, g)
	}
	if !g.undecided {
		// A GPU whose samples turned out unsupported has no GPM after all.
		b.Add(g.supported, boolValue(g.isSupported && d.want(probeGPMSample)))
	}
	if !g.isSupported || !d.want(probeGPMSample) {
		return
	}
	next := 1 - g.latest
	if ret := d.dev.GpmSampleGet(g.samples[next]); !c.ok(d, probeGPMSample, ret) {
		g.havePrevious = false
		return
	}
	previous, had := g.latest, g.havePrevious
	g.latest, g.havePrevious = next, true
	if !had || !d.want(probeGPMMetrics) {
		return
	}
	req, ret := c.gpmMetrics(g.ids, g.samples[previous], g.samples[next])
	if !c.ok(d, probeGPMMetrics, ret) {
		return
	}
	for i, slots := range g.engineSlots {
		sum, n := 0.0, 0
		for _, k := range slots {
			m := &req.Metrics[k]
			if nvml.Return(m.NvmlReturn) == nvml.SUCCESS {
				sum += m.Value
				n++
			}
		}
		if n > 0 {
			b.Add(g.engine[i], sum/float64(n)/100)
		}
	}
	for i, k := range g.linkSlot {
		if m := &req.Metrics[k]; nvml.Return(m.NvmlReturn) == nvml.SUCCESS {
			b.Add(g.link[i], m.Value*bytesPerMiB)
		}
	}
}
