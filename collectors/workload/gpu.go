package workload

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// podRefresh is how often the kubelet is asked for pod devices: pods come and go on the scale of
// seconds, and the call stays off every exporter's path.
const podRefresh = 30 * time.Second

// gpuEnergy splits each GPU's energy in the interval across the cgroups of its compute processes
// by NVML per-process SM utilization; a GPU with no process is charged to the pod the kubelet
// assigned it to, else reported as idle energy.
type gpuEnergy struct {
	lib    nvml.Interface
	procfs string
	pods   *PodResources
	podMap map[string]PodRef
	podsAt time.Time
	now    func() time.Time
	devs   []*gpuDevice
	series map[gpuKey]*gpuSeries
	// round counts collections; a series is kept while it had energy attributed in one of the
	// last window collections (the collector's active intervals).
	round, window uint64
}

type gpuDevice struct {
	dev    nvml.Device
	uuid   string
	lastMJ uint64
	have   bool
	lastTS uint64 // µs, for GetProcessUtilization
	idle   *sample.Series
	idleJ  float64
}

type gpuKey struct {
	cgroup string
	pod    PodRef
}

type gpuSeries struct {
	s      *sample.Series
	joules float64
	last   uint64 // the round energy was last attributed to it
}

func newGPUEnergy(lib nvml.Interface, procfs string, pods *PodResources, now func() time.Time, window uint64) *gpuEnergy {
	g := &gpuEnergy{lib: lib, procfs: procfs, pods: pods, now: now, series: map[gpuKey]*gpuSeries{}, window: max(window, 1)}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return g
	}
	for i := 0; i < n; i++ {
		d, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, ret := d.GetUUID()
		if ret != nvml.SUCCESS {
			continue
		}
		g.devs = append(g.devs, &gpuDevice{dev: d, uuid: uuid,
			idle: sample.NewSeries(metrics.WorkloadGPUIdleEnergy, attribute.String(metrics.AttrHWID, uuid))})
	}
	return g
}

// collect attributes the interval's GPU energy and writes the GPU workload series active in the
// window.
func (g *gpuEnergy) collect(ctx context.Context, b *sample.Batch, log func(msg string, args ...any)) {
	g.round++
	now := g.now()
	if g.pods != nil && now.Sub(g.podsAt) >= podRefresh {
		m, err := g.pods.GPUPods(ctx)
		if err != nil {
			log("kubelet pod-resources unavailable", "err", err)
		} else {
			g.podMap = m
		}
		g.podsAt = now
	}
	for _, d := range g.devs {
		mj, ret := d.dev.GetTotalEnergyConsumption()
		if ret != nvml.SUCCESS {
			continue
		}
		joules := 0.0
		if d.have && mj >= d.lastMJ {
			joules = float64(mj-d.lastMJ) / 1e3
		}
		d.lastMJ, d.have = mj, true
		shares := g.processShares(d, now)
		pod := g.podMap[d.uuid]
		switch {
		case len(shares) > 0:
			for cg, share := range shares {
				g.add(gpuKey{cgroup: cg, pod: pod}, joules*share)
			}
		case pod != PodRef{}:
			g.add(gpuKey{pod: pod}, joules)
		default:
			d.idleJ += joules
		}
		b.Add(d.idle, d.idleJ)
	}
	for k, s := range g.series {
		// Like a cgroup's CPU series, a GPU series leaves the export when it had no process (or
		// pod) on a GPU for the window; it is also forgotten, since every job on the node,
		// ever, would otherwise keep one. A cgroup back on a GPU later starts from zero.
		if g.round-s.last >= g.window {
			delete(g.series, k)
			continue
		}
		b.Add(s.s, s.joules)
	}
}

func (g *gpuEnergy) add(k gpuKey, joules float64) {
	s := g.series[k]
	if s == nil {
		attrs := []attribute.KeyValue{
			attribute.String(metrics.AttrCgroupPath, k.cgroup),
			attribute.String(metrics.AttrHWType, "gpu"),
			attribute.String(metrics.AttrWorkloadSource, "nvml"),
		}
		id := ParseIdentity(k.cgroup)
		if id.ContainerID != "" {
			attrs = append(attrs, attribute.String(metrics.AttrContainerID, id.ContainerID))
		}
		if id.PodUID != "" {
			attrs = append(attrs, attribute.String(metrics.AttrPodUID, id.PodUID))
		}
		if id.SlurmJobID != "" {
			attrs = append(attrs, attribute.String(metrics.AttrSlurmJobID, id.SlurmJobID))
		}
		if k.pod.Name != "" {
			attrs = append(attrs, attribute.String(metrics.AttrPodName, k.pod.Name), attribute.String(metrics.AttrNamespaceName, k.pod.Namespace))
		}
		s = &gpuSeries{s: sample.NewSeries(metrics.WorkloadEnergy, attrs...)}
		g.series[k] = s
	}
	s.joules += joules
	s.last = g.round
}

// processShares maps the GPU's compute processes to cgroups with each one's share of SM
// utilization since the last call (equal shares when NVML has no samples).
func (g *gpuEnergy) processShares(d *gpuDevice, now time.Time) map[string]float64 {
	procs, ret := d.dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS || len(procs) == 0 {
		return nil
	}
	util := map[uint32]float64{}
	samples, ret := d.dev.GetProcessUtilization(d.lastTS)
	d.lastTS = uint64(now.UnixMicro())
	if ret == nvml.SUCCESS {
		for _, s := range samples {
			util[s.Pid] += float64(s.SmUtil)
		}
	}
	weights := map[string]float64{}
	total := 0.0
	for _, p := range procs {
		cg, ok := g.pidCgroup(p.Pid)
		if !ok {
			continue
		}
		w := util[p.Pid]
		weights[cg] += w
		total += w
	}
	if total == 0 {
		for cg := range weights {
			weights[cg] = 1
			total++
		}
	}
	for cg := range weights {
		weights[cg] /= total
	}
	return weights
}

// pidCgroup reads the process's cgroup v2 path (the "0::" line of /proc/<pid>/cgroup, present on
// pure v2 and hybrid hosts alike).
func (g *gpuEnergy) pidCgroup(pid uint32) (string, bool) {
	f, err := os.Open(filepath.Join(g.procfs, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		return "", false
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, true
		}
	}
	return "", false
}
