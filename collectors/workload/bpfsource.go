package workload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	cbpf "github.com/capstan-power/capstan/bpf"
)

// bpfSource holds the loaded programs and their links.
type bpfSource struct {
	objs  cbpf.WorkloadObjects
	links []link.Link
	// batch read buffers, reused every collection.
	ncpu    int
	entries int // cgroups the per-CPU maps hold
	keys    []uint64
	cpuVals []cbpf.WorkloadCpuUsage
	netVals []cbpf.WorkloadNetUsage
	gone    []uint64
}

// cpuCounters and netCounters are a cgroup's kernel totals summed over CPUs.
type cpuCounters struct{ ns, cycles uint64 }
type netCounters struct{ rxBytes, rxPackets, txBytes, txPackets uint64 }

// loadBPF loads and attaches the programs: sched_switch and cpu_frequency as BTF tracepoints,
// cgroup_skb on the v2 root. It needs CAP_BPF + CAP_PERFMON (or root) and kernel BTF.
func loadBPF(cgroupRoot, sysfs string) (*bpfSource, error) {
	if _, err := os.Stat(filepath.Join(sysfs, "kernel", "btf", "vmlinux")); err != nil {
		return nil, fmt.Errorf("kernel BTF: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("removing the memlock limit: %w", err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("counting possible CPUs: %w", err)
	}
	s := &bpfSource{ncpu: ncpu, keys: make([]uint64, batchSize),
		cpuVals: make([]cbpf.WorkloadCpuUsage, batchSize*ncpu), netVals: make([]cbpf.WorkloadNetUsage, batchSize*ncpu)}
	spec, err := cbpf.LoadWorkload()
	if err != nil {
		return nil, fmt.Errorf("reading BPF objects: %w", err)
	}
	s.entries = mapEntries(ncpu)
	for _, name := range []string{"cpu_usage", "net_usage"} {
		spec.Maps[name].MaxEntries = uint32(s.entries)
	}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("loading BPF objects: %w", err)
	}
	seedFrequencies(s.objs.CpuKhz, sysfs)
	attach := func(what string, l link.Link, err error) error {
		if err != nil {
			return fmt.Errorf("attaching %s: %w", what, err)
		}
		s.links = append(s.links, l)
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: s.objs.SchedSwitch})
	if err = attach("sched_switch", l, err); err == nil {
		l, err = link.AttachTracing(link.TracingOptions{Program: s.objs.CpuFrequency})
		err = attach("cpu_frequency", l, err)
	}
	if err == nil {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroupRoot, Attach: ebpf.AttachCGroupInetIngress, Program: s.objs.SkbIngress})
		err = attach("cgroup_skb ingress on "+cgroupRoot, l, err)
	}
	if err == nil {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroupRoot, Attach: ebpf.AttachCGroupInetEgress, Program: s.objs.SkbEgress})
		err = attach("cgroup_skb egress on "+cgroupRoot, l, err)
	}
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// The per-CPU hash maps are preallocated: each cgroup slot costs its values (48 bytes for both
// maps) on every possible CPU, charged to the agent's memory cgroup. mapBudget bounds that, so a
// 384-thread host does not need 288 MiB for maps; the slot count stays within
// [minMapEntries, maxMapEntries].
const (
	mapBudget     = 48 << 20
	mapSlotBytes  = 48
	minMapEntries = 1024
	maxMapEntries = 16384
)

// mapEntries is how many cgroups the per-CPU maps hold on a host of ncpu possible CPUs.
func mapEntries(ncpu int) int {
	return min(max(mapBudget/(mapSlotBytes*max(ncpu, 1)), minMapEntries), maxMapEntries)
}

// nominalKHz seeds every CPU when none has a cpufreq reading: with one frequency on every CPU,
// cycle shares are on-CPU time shares.
const nominalKHz = 1_000_000

// seedFrequencies writes each CPU's cpufreq reading into cpu_khz, so cycles are estimated before
// the first power:cpu_frequency event (which only fires on a change). Every possible CPU id is
// seeded, not just runtime.NumCPU() of them (the CPUs this process may run on): a CPU left at 0
// kHz would count no cycles, and its time would get no energy. An id without a reading gets the
// highest reading of the others, or nominalKHz when there is none.
func seedFrequencies(m *ebpf.Map, sysfs string) {
	ncpu, err := ebpf.PossibleCPU() // loadBPF has read it already
	if err != nil {
		return
	}
	khz := make([]uint32, min(ncpu, int(m.MaxEntries())))
	var highest uint32
	for cpu := range khz {
		dir := filepath.Join(sysfs, "devices", "system", "cpu", "cpu"+strconv.Itoa(cpu), "cpufreq")
		for _, f := range []string{"scaling_cur_freq", "cpuinfo_cur_freq"} {
			raw, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				continue
			}
			v, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 32)
			if err != nil || v == 0 {
				continue
			}
			khz[cpu], highest = uint32(v), max(highest, uint32(v))
			break
		}
	}
	if highest == 0 {
		highest = nominalKHz
	}
	for cpu, v := range khz {
		if v == 0 {
			v = highest
		}
		_ = m.Put(uint32(cpu), v) // an array map with an id in range takes every write
	}
}

// batchSize is how many cgroups one BPF_MAP_LOOKUP_BATCH call reads.
const batchSize = 1024

// readPerCPU reads every entry of a per-CPU hash keyed by cgroup id, a batch of keys per
// syscall (a syscall per key costs ~10 ms for 1,000 cgroups); kernels without batch lookups
// are iterated instead.
func readPerCPU[V any](m *ebpf.Map, ncpu int, keys []uint64, vals []V, fn func(id uint64, perCPU []V)) error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			fn(keys[i], vals[i*ncpu:(i+1)*ncpu])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			var key uint64
			perCPU := make([]V, ncpu)
			it := m.Iterate()
			for it.Next(&key, &perCPU) {
				fn(key, perCPU)
			}
			return it.Err()
		case err != nil:
			return err
		}
	}
}

// readCPU sums each cgroup's per-CPU counters.
func (s *bpfSource) readCPU(fn func(id uint64, c cpuCounters)) error {
	return readPerCPU(s.objs.CpuUsage, s.ncpu, s.keys, s.cpuVals, func(id uint64, vals []cbpf.WorkloadCpuUsage) {
		var c cpuCounters
		for _, v := range vals {
			c.ns += v.Ns
			c.cycles += v.Cycles
		}
		fn(id, c)
	})
}

func (s *bpfSource) readNet(fn func(id uint64, c netCounters)) error {
	return readPerCPU(s.objs.NetUsage, s.ncpu, s.keys, s.netVals, func(id uint64, vals []cbpf.WorkloadNetUsage) {
		var c netCounters
		for _, v := range vals {
			c.rxBytes += v.RxBytes
			c.rxPackets += v.RxPackets
			c.txBytes += v.TxBytes
			c.txPackets += v.TxPackets
		}
		fn(id, c)
	})
}

// forget queues a cgroup that no longer exists for removal from the maps; deleting while a map
// is iterated would restart the iteration.
func (s *bpfSource) forget(id uint64) { s.gone = append(s.gone, id) }

// flush deletes the forgotten cgroups.
func (s *bpfSource) flush() {
	for _, id := range s.gone {
		_ = s.objs.CpuUsage.Delete(id)
		_ = s.objs.NetUsage.Delete(id)
	}
	s.gone = s.gone[:0]
}

// programStats returns the sched_switch program's kernel run count and run time (needs
// kernel.bpf_stats_enabled).
func (s *bpfSource) programStats() (runCount uint64, runTimeNs uint64, err error) {
	st, err := s.objs.SchedSwitch.Stats()
	if err != nil {
		return 0, 0, err
	}
	return st.RunCount, uint64(st.Runtime), nil
}

// bpfPrograms are the programs as capstan.bpf.program names them, in bpfSource.missed's order.
var bpfPrograms = [...]string{"sched_switch", "cpu_frequency", "cgroup_skb_ingress", "cgroup_skb_egress"}

// missed fills n with each program's recursion misses (ProgramStats.RecursionMisses): runs the
// kernel skipped because a BPF program was already running on that CPU, each a context switch,
// frequency change or packet not counted. It is false on a kernel that cannot tell (before 5.8).
func (s *bpfSource) missed(n *[len(bpfPrograms)]uint64) bool {
	for i, p := range [...]*ebpf.Program{s.objs.SchedSwitch, s.objs.CpuFrequency, s.objs.SkbIngress, s.objs.SkbEgress} {
		st, err := p.Stats()
		if err != nil {
			return false
		}
		n[i] = st.RecursionMisses
	}
	return true
}

func (s *bpfSource) Close() error {
	var errs []error
	for i := len(s.links) - 1; i >= 0; i-- {
		errs = append(errs, s.links[i].Close())
	}
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}
