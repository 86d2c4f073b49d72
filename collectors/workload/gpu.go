package workload

import (
	"bufio"
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// podRefresh is how often the kubelet is asked for pod devices (and each GPU for its MIG
// devices): pods come and go on the scale of seconds, and the call stays off every exporter's
// path.
const podRefresh = 30 * time.Second

// noInstance is NVML's GPU instance of a process on a GPU not in MIG mode.
const noInstance = 0xFFFFFFFF

// gpuEnergy splits each GPU's energy in the interval across the cgroups of its compute processes
// by NVML per-process SM utilization (on a GPU in MIG mode, which has none, by the size of the
// instances the processes run in); a GPU with no process is charged to the pods the kubelet
// assigned it (or its MIG devices, or its time-sliced replicas) to, else reported as idle energy.
// It also exports each workload's GPU memory and SM share, and, when selected, each process's.
type gpuEnergy struct {
	lib     nvml.Interface
	procfs  string
	pods    *PodResources
	podMap  map[string][]PodRef
	podsAt  time.Time
	now     func() time.Time
	devs    []*gpuDevice
	series  map[gpuKey]*gpuSeries
	use     map[useKey]*useSeries
	procs   map[procKey]*procSeries
	perProc bool // per-process series are selected
	// round counts collections; a series is kept while it had energy attributed in one of the
	// last window collections (the collector's active intervals).
	round, window uint64
	// scratch, reused every collection
	weights map[gpuKey]float64
	util    map[uint32]*procUtil
	entries []procEntry
	procBuf []nvml.ProcessInfo
	batch   *sample.Batch // the collection's batch, for the per-process series
	perInst map[uint32]int
	// cgroupOf caches each GPU process's cgroup, read again every cgroupRecheck collections (a
	// process rarely moves; its PID may be reused once it ended) and forgotten when the PID
	// leaves the GPUs.
	cgroupOf map[uint32]cachedCgroup
	// findCgroup finds the host path of a cgroup the walk knows by the tail of its path, at a
	// depth (see hostPath); nil without a walk. nsDepth is the depth of the agent's own cgroup
	// namespace root on the host, once read (nsRead).
	findCgroup func(tail string, depth int) (string, bool)
	nsDepth    int
	nsRead     bool
}

type cachedCgroup struct {
	path      string
	readRound uint64
	seenRound uint64
}

// cgroupRecheck is how many collections a process's cgroup is trusted before it is read again.
const cgroupRecheck = 6

type gpuDevice struct {
	dev    nvml.Device
	uuid   string
	lastMJ uint64
	have   bool
	// lastTS is the newest per-process utilisation sample seen (NVML's µs), which the next
	// GetProcessUtilization asks for samples after; utilPrimed once the first call set it.
	lastTS     uint64
	utilPrimed bool
	idle       *sample.Series
	idleJ      float64
	// mig are the GPU's MIG devices (one per compute instance, each with the UUID the kubelet
	// names it by) and giMem the memory of each GPU instance, refreshed with the pods and when
	// a process runs in an instance not listed.
	mig   map[migKey]string
	giMem map[uint32]uint64
	// noMPS: the driver has no MPS process list (not supported), so it is not asked again.
	noMPS bool
	// migMode: the GPU was in MIG mode when last listed (a change needs a GPU reset); migAt
	// is the round it was.
	migMode bool
	migAt   uint64
}

// migKey is a MIG device: a compute instance within a GPU instance.
type migKey struct{ gi, ci uint32 }

type gpuKey struct {
	cgroup string
	pod    PodRef
}

type gpuSeries struct {
	s      *sample.Series
	joules float64
	last   uint64 // the round energy was last attributed to it
}

// useKey is a workload on one device (GPU or MIG device).
type useKey struct {
	gpuKey
	device string
}

type useSeries struct {
	mem, sm         *sample.Series
	memB, smFrac    float64
	haveMem, haveSM bool
	round           uint64
}

type procKey struct {
	pid    uint32
	device string
	cgroup string
}

type procSeries struct {
	mem   *sample.Series
	task  [4]*sample.Series // sm, memory, encoder, decoder
	round uint64
}

var procTasks = [4]string{"sm", "memory", "encoder", "decoder"}

// procUtil is one process's mean utilisation over NVML's samples since the last collection.
type procUtil struct {
	sum [4]float64
	n   int
}

func newGPUEnergy(lib nvml.Interface, procfs string, pods *PodResources, now func() time.Time, window uint64, enabled func(*metrics.Def) bool) *gpuEnergy {
	g := &gpuEnergy{lib: lib, procfs: procfs, pods: pods, now: now, series: map[gpuKey]*gpuSeries{}, window: max(window, 1),
		use: map[useKey]*useSeries{}, procs: map[procKey]*procSeries{}, weights: map[gpuKey]float64{}, util: map[uint32]*procUtil{},
		perInst: map[uint32]int{}, cgroupOf: map[uint32]cachedCgroup{}}
	if enabled == nil {
		enabled = (*metrics.Def).OnByDefault
	}
	g.perProc = enabled(metrics.GPUProcessMemory) || enabled(metrics.GPUProcessUtilization)
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
	g.batch = b
	defer func() { g.batch = nil }()
	now := g.now()
	if g.podsAt.IsZero() || now.Sub(g.podsAt) >= podRefresh {
		if g.pods != nil {
			m, err := g.pods.GPUPods(ctx)
			if err != nil {
				log("kubelet pod-resources unavailable", "err", err)
			} else {
				g.podMap = m
			}
		}
		for _, d := range g.devs {
			d.refreshMIG(g.round)
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
		attributed := g.processShares(d)
		if attributed == 0 {
			attributed = g.podShares(d)
		}
		for k, share := range g.weights {
			g.add(k, joules*share)
		}
		d.idleJ += joules * max(0, 1-attributed)
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
	for k, u := range g.use {
		if u.round != g.round {
			delete(g.use, k) // a gauge of now: gone with the workload's last process
			continue
		}
		if u.haveMem {
			b.Add(u.mem, u.memB)
		}
		if u.haveSM {
			b.Add(u.sm, u.smFrac)
		}
	}
	for k, p := range g.procs {
		if p.round != g.round {
			delete(g.procs, k)
		}
	}
	for pid, cg := range g.cgroupOf {
		if cg.seenRound != g.round {
			delete(g.cgroupOf, pid)
		}
	}
}

// processCgroup is pidCgroup through the cache.
func (g *gpuEnergy) processCgroup(pid uint32) (string, bool) {
	if cg, ok := g.cgroupOf[pid]; ok && g.round-cg.readRound < cgroupRecheck {
		cg.seenRound = g.round
		g.cgroupOf[pid] = cg
		return cg.path, true
	}
	path, ok := g.pidCgroup(pid)
	if !ok {
		delete(g.cgroupOf, pid)
		return "", false
	}
	g.cgroupOf[pid] = cachedCgroup{path: path, readRound: g.round, seenRound: g.round}
	return path, true
}

// refreshMIG lists the GPU's MIG devices, when it is in MIG mode.
func (d *gpuDevice) refreshMIG(round uint64) {
	d.migAt = round
	clear(d.mig)
	clear(d.giMem)
	mode, _, ret := d.dev.GetMigMode()
	d.migMode = ret == nvml.SUCCESS && mode == nvml.DEVICE_MIG_ENABLE
	if !d.migMode {
		return
	}
	n, ret := d.dev.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return
	}
	if d.mig == nil {
		d.mig, d.giMem = map[migKey]string{}, map[uint32]uint64{}
	}
	for i := range n {
		h, ret := d.dev.GetMigDeviceHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		gi, ret1 := h.GetGpuInstanceId()
		ci, ret2 := h.GetComputeInstanceId()
		uuid, ret3 := h.GetUUID()
		mem, ret4 := h.GetMemoryInfo()
		if ret1 == nvml.SUCCESS && ret2 == nvml.SUCCESS && ret3 == nvml.SUCCESS && ret4 == nvml.SUCCESS {
			// The compute instances of a GPU instance share its memory: each reports all of it.
			d.mig[migKey{uint32(gi), uint32(ci)}] = uuid
			d.giMem[uint32(gi)] = mem.Total
		}
	}
}

// migTotal is the memory of all the GPU's instances: the whole an instance's share is of.
func (d *gpuDevice) migTotal() uint64 {
	var t uint64
	for _, m := range d.giMem {
		t += m
	}
	return t
}

// migDevice finds the MIG device of a process's instances, listing the GPU's devices again
// (once a collection) when they are not known: an instance made since the last listing.
func (d *gpuDevice) migDevice(k migKey, round uint64) (string, bool) {
	uuid, ok := d.mig[k]
	if !ok && d.migAt != round {
		d.refreshMIG(round)
		uuid, ok = d.mig[k]
	}
	return uuid, ok
}

// onePod is the pod that holds device id, when exactly one does: a device time-sliced between
// several pods names none, since the kubelet does not say which process is whose.
func (g *gpuEnergy) onePod(id string) PodRef {
	if pods := g.podMap[id]; len(pods) == 1 {
		return pods[0]
	}
	return PodRef{}
}

func (g *gpuEnergy) add(k gpuKey, joules float64) {
	s := g.series[k]
	if s == nil {
		s = &gpuSeries{s: sample.NewSeries(metrics.WorkloadEnergy, workloadGPUAttrs(k)...)}
		g.series[k] = s
	}
	s.joules += joules
	s.last = g.round
}

// workloadGPUAttrs are a GPU workload series' attributes: its cgroup's identity and its pod.
func workloadGPUAttrs(k gpuKey, extra ...attribute.KeyValue) []attribute.KeyValue {
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
	return append(attrs, extra...)
}

// procEntry is one compute process of the GPU being attributed.
type procEntry struct {
	key    gpuKey
	device string
	gi     uint32 // noInstance outside MIG
	sm     float64
	// known: the process's cgroup (and, under MIG, its instance) was found. The share of one
	// that was not stays unattributed (idle energy) rather than going to the others.
	known bool
}

// processShares fills g.weights with each cgroup's share of the GPU's energy from its compute
// processes and returns the share attributed (0 when the GPU has no process). With NVML's
// per-process utilisation the cgroups share by SM time (MPS and time-slicing alike); without it
// (MIG mode, or no samples) each process gets an equal part of its GPU instance's share of the
// GPU, or of the whole GPU. A process whose cgroup or instance cannot be found keeps its share
// unattributed. It also records each workload's (and process's) use.
func (g *gpuEnergy) processShares(d *gpuDevice) float64 {
	clear(g.weights)
	procs := g.computeProcesses(d)
	if len(procs) == 0 {
		return 0
	}
	g.readUtilization(d)
	g.entries = g.entries[:0]
	smTotal := 0.0
	perInstance := g.perInst
	clear(perInstance)
	for _, p := range procs {
		cg, cgOK := g.processCgroup(p.Pid)
		e := procEntry{device: d.uuid, gi: noInstance, known: cgOK}
		if d.migMode && p.GpuInstanceId != noInstance {
			e.gi = p.GpuInstanceId
			perInstance[e.gi]++
			uuid, ok := d.migDevice(migKey{p.GpuInstanceId, p.ComputeInstanceId}, g.round)
			e.device, e.known = uuid, e.known && ok
		}
		u := g.util[p.Pid]
		haveSM := u != nil && u.n > 0
		if haveSM {
			e.sm = u.sum[0] / float64(u.n)
		}
		smTotal += e.sm
		if e.known {
			e.key = gpuKey{cgroup: cg, pod: g.onePod(e.device)}
		}
		g.entries = append(g.entries, e)
		if !e.known {
			continue
		}
		// NVML reports no memory for a process it may not show (VALUE_NOT_AVAILABLE).
		memB, haveMem := float64(p.UsedGpuMemory), p.UsedGpuMemory != math.MaxUint64
		g.recordUse(useKey{gpuKey: e.key, device: e.device}, memB, haveMem, e.sm, haveSM)
		if g.perProc {
			g.recordProcess(p.Pid, e.device, cg, memB, haveMem, u)
		}
	}
	if len(g.util) > 4*len(procs)+64 {
		clear(g.util) // processes come and go: do not keep every PID ever seen
	}
	attributed := 0.0
	if smTotal > 0 {
		for _, e := range g.entries {
			if e.known {
				g.weights[e.key] += e.sm / smTotal
				attributed += e.sm / smTotal
			}
		}
		return min(1, attributed)
	}
	// No utilisation: equal parts, of each GPU instance's share or of the whole GPU.
	migTotal := d.migTotal()
	for _, e := range g.entries {
		share := 1 / float64(len(g.entries))
		if e.gi != noInstance {
			share = 0 // an instance not listed has no known share
			if m := d.giMem[e.gi]; m > 0 && migTotal > 0 {
				share = float64(m) / float64(migTotal) / float64(perInstance[e.gi])
			}
		}
		if e.known {
			g.weights[e.key] += share
			attributed += share
		}
	}
	return min(1, attributed)
}

// computeProcesses lists the GPU's compute processes: NVML's compute processes and, under MPS,
// its MPS clients, which NVML lists apart (the plain list shows the MPS server). A process in
// both is listed once.
func (g *gpuEnergy) computeProcesses(d *gpuDevice) []nvml.ProcessInfo {
	procs, ret := d.dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		procs = nil
	}
	if d.noMPS {
		return procs
	}
	clients, ret := d.dev.GetMPSComputeRunningProcesses()
	if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_FUNCTION_NOT_FOUND {
		d.noMPS = true
	}
	if ret != nvml.SUCCESS || len(clients) == 0 {
		return procs
	}
	all := append(g.procBuf[:0], procs...)
	for _, c := range clients {
		if !slices.ContainsFunc(procs, func(p nvml.ProcessInfo) bool { return p.Pid == c.Pid }) {
			all = append(all, c)
		}
	}
	g.procBuf = all
	return all
}

// readUtilization fills g.util with each process's mean utilisation over the samples NVML took
// since the last call. The first call only finds where the samples end: NVML keeps a buffer
// going back further than one interval, and an interval's energy needs the interval's samples.
func (g *gpuEnergy) readUtilization(d *gpuDevice) {
	for _, u := range g.util {
		*u = procUtil{}
	}
	samples, ret := d.dev.GetProcessUtilization(d.lastTS)
	if ret != nvml.SUCCESS {
		return // ERROR_NOT_FOUND: no sample since; NOT_SUPPORTED: MIG mode
	}
	primed := d.utilPrimed
	d.utilPrimed = true
	for _, s := range samples {
		d.lastTS = max(d.lastTS, s.TimeStamp)
		if !primed {
			continue
		}
		u := g.util[s.Pid]
		if u == nil {
			u = &procUtil{}
			g.util[s.Pid] = u
		}
		u.sum[0] += float64(s.SmUtil)
		u.sum[1] += float64(s.MemUtil)
		u.sum[2] += float64(s.EncUtil)
		u.sum[3] += float64(s.DecUtil)
		u.n++
	}
}

// podShares fills g.weights for a GPU without processes from the pods the kubelet assigned it to:
// the whole GPU's pods share it equally (time-sliced replicas), a MIG device's pods its
// instance's share. It returns the share attributed.
func (g *gpuEnergy) podShares(d *gpuDevice) float64 {
	clear(g.weights)
	attributed := 0.0
	if pods := g.podMap[d.uuid]; len(pods) > 0 {
		for _, p := range pods {
			g.weights[gpuKey{pod: p}] += 1 / float64(len(pods))
		}
		attributed = 1
	}
	if total := d.migTotal(); total > 0 {
		for k, uuid := range d.mig {
			pods := g.podMap[uuid]
			for _, p := range pods {
				// The GPU instance's share, split between its compute instances and their pods.
				share := float64(d.giMem[k.gi]) / float64(total) / float64(d.computeInstances(k.gi)) / float64(len(pods))
				g.weights[gpuKey{pod: p}] += share
				attributed += share
			}
		}
	}
	return min(1, attributed)
}

// computeInstances is how many MIG devices GPU instance gi has.
func (d *gpuDevice) computeInstances(gi uint32) int {
	n := 0
	for k := range d.mig {
		if k.gi == gi {
			n++
		}
	}
	return n
}

// recordUse adds one process's memory and SM time to its workload's use of a device.
func (g *gpuEnergy) recordUse(k useKey, memB float64, haveMem bool, smPct float64, haveSM bool) {
	u := g.use[k]
	if u == nil {
		hw := attribute.String(metrics.AttrHWID, k.device)
		u = &useSeries{
			mem: sample.NewSeries(metrics.WorkloadGPUMemory, workloadGPUAttrs(k.gpuKey, hw)...),
			sm:  sample.NewSeries(metrics.WorkloadGPUUtilization, workloadGPUAttrs(k.gpuKey, hw)...),
		}
		g.use[k] = u
	}
	if u.round != g.round {
		u.round, u.memB, u.smFrac, u.haveMem, u.haveSM = g.round, 0, 0, false, false
	}
	if haveMem {
		u.memB += memB
		u.haveMem = true
	}
	if haveSM {
		u.smFrac += smPct / 100
		u.haveSM = true
	}
}

// recordProcess exports one process's memory and utilisation (off by default).
func (g *gpuEnergy) recordProcess(pid uint32, device, cg string, memB float64, haveMem bool, u *procUtil) {
	k := procKey{pid: pid, device: device, cgroup: cg}
	p := g.procs[k]
	if p == nil {
		base := sample.NewSeries(nil, attribute.String(metrics.AttrHWID, device),
			attribute.Int64(metrics.AttrProcessPID, int64(pid)), attribute.String(metrics.AttrCgroupPath, cg))
		p = &procSeries{mem: base.With(metrics.GPUProcessMemory)}
		for i, t := range procTasks {
			p.task[i] = base.With(metrics.GPUProcessUtilization, attribute.String(metrics.AttrGPUTask, t))
		}
		g.procs[k] = p
	}
	p.round = g.round
	if haveMem {
		g.batch.Add(p.mem, memB)
	}
	if u != nil && u.n > 0 {
		for i := range p.task {
			g.batch.Add(p.task[i], u.sum[i]/float64(u.n)/100)
		}
	}
}

// pidCgroup is the host path of the process's cgroup.
func (g *gpuEnergy) pidCgroup(pid uint32) (string, bool) {
	p, ok := g.cgroupV2Path(pid)
	if !ok {
		return "", false
	}
	return g.hostPath(p)
}

// cgroupV2Path reads the process's cgroup v2 path as the agent's cgroup namespace shows it (the
// "0::" line of /proc/<pid>/cgroup, present on pure v2 and hybrid hosts alike).
func (g *gpuEnergy) cgroupV2Path(pid uint32) (string, bool) {
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

// climb splits a cgroup path shown from another cgroup namespace into how many levels it climbs
// ("/.." each) and the path below them ("/../../a/b": 2, "/a/b").
func climb(p string) (up int, below string) {
	for p == "/.." || strings.HasPrefix(p, "/../") {
		up++
		p = p[3:]
	}
	return up, p
}

// hostPath turns a cgroup path as the agent reads it into the path on the host. In a container
// with a cgroup namespace of its own (cgroup v2's default), the kernel shows another container's
// cgroup relative to the agent's namespace root: "/../../kubepods-besteffort.slice/…/cri-….scope"
// climbs two levels from it. The walk of the host's cgroup tree knows every cgroup by its host
// path; the process's is the one that ends with the path below the climb, at the depth the
// climb implies (the root's depth, read from PID 1's cgroup, less the climb, plus the tail's).
// Nothing, or two matches, is no answer: the process's share stays unattributed.
func (g *gpuEnergy) hostPath(p string) (string, bool) {
	up, p := climb(p)
	if up == 0 {
		return p, true
	}
	if p == "" {
		p = "/"
	}
	depth, ok := g.namespaceDepth()
	if !ok || up > depth || g.findCgroup == nil {
		return "", false
	}
	return g.findCgroup(p, depth-up+pathDepth(p))
}

// namespaceDepth is how deep the agent's cgroup namespace root sits in the host's tree: PID 1
// (the host's init, with the host's /proc) is in the root cgroup, shown as one "/.." per level.
func (g *gpuEnergy) namespaceDepth() (int, bool) {
	if !g.nsRead {
		g.nsRead = true
		g.nsDepth = -1
		if p, ok := g.cgroupV2Path(1); ok {
			g.nsDepth, _ = climb(p)
		}
	}
	return g.nsDepth, g.nsDepth >= 0
}

// pathDepth is how many levels below the root a cgroup path is ("/" 0, "/a/b" 2).
func pathDepth(p string) int {
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}
