package workload

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	cbpf "github.com/capstan-power/capstan/bpf"
)

// BenchmarkSchedSwitchProgram measures the sched_switch program's own cost, as the kernel
// counts it (run_time_ns / run_cnt with kernel.bpf_stats_enabled), while two threads ping-pong
// a byte over pipes: every round trip is two context switches.
func BenchmarkSchedSwitchProgram(b *testing.B) {
	requireRoot(b)
	c := ebpfCollector(b)
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Skipf("enabling BPF run-time statistics: %v", err)
	}
	defer func() { _ = stats.Close() }()
	var p1, p2 [2]int
	if err := unix.Pipe(p1[:]); err != nil {
		b.Fatal(err)
	}
	if err := unix.Pipe(p2[:]); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, 1)
		for {
			if _, err := unix.Read(p1[0], buf); err != nil || buf[0] == 0 {
				close(done)
				return
			}
			_, _ = unix.Write(p2[1], buf)
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cnt0, rt0, err := c.bpf.programStats()
	if err != nil {
		b.Fatal(err)
	}
	buf := []byte{1}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _ = unix.Write(p1[1], buf)
		_, _ = unix.Read(p2[0], buf)
	}
	b.StopTimer()
	cnt1, rt1, err := c.bpf.programStats()
	if err != nil {
		b.Fatal(err)
	}
	_, _ = unix.Write(p1[1], []byte{0})
	<-done
	events := cnt1 - cnt0
	if events == 0 {
		b.Fatal("sched_switch never ran")
	}
	b.ReportMetric(float64(rt1-rt0)/float64(events), "ns/event")
	b.ReportMetric(float64(events)/float64(b.N), "events/op")
}

// populate creates n cgroups under a test parent and gives each a counter entry in the maps.
func populate(b *testing.B, c *Collector, n int) []uint64 {
	b.Helper()
	parent := filepath.Join(c.root, fmt.Sprintf("capstan-bench-%d", os.Getpid()))
	if err := os.Mkdir(parent, 0o755); err != nil {
		b.Fatal(err)
	}
	ids := make([]uint64, n)
	b.Cleanup(func() {
		for i := 0; i < n; i++ {
			_ = os.Remove(filepath.Join(parent, fmt.Sprintf("cg%04d", i)))
		}
		_ = os.Remove(parent)
	})
	for i := range ids {
		dir := filepath.Join(parent, fmt.Sprintf("cg%04d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		id, err := cgroupID(dir)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// BenchmarkCollect1000Cgroups reads and attributes 1,000 active cgroups from the eBPF maps: the
// target is ≤ 2 ms of CPU per collection.
func BenchmarkCollect1000Cgroups(b *testing.B) {
	requireRoot(b)
	c := ebpfCollector(b)
	ids := populate(b, c, 1000)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	cpuVals := make([]cbpf.WorkloadCpuUsage, ncpu)
	netVals := make([]cbpf.WorkloadNetUsage, ncpu)
	bump := func(round uint64) {
		for i, id := range ids {
			for cpu := range cpuVals {
				cpuVals[cpu] = cbpf.WorkloadCpuUsage{Ns: round * uint64(1000+i), Cycles: round * uint64(2000+i)}
				netVals[cpu] = cbpf.WorkloadNetUsage{RxBytes: round * 100, RxPackets: round, TxBytes: round * 200, TxPackets: round}
			}
			if err := c.bpf.objs.CpuUsage.Put(id, cpuVals); err != nil {
				b.Fatal(err)
			}
			if err := c.bpf.objs.NetUsage.Put(id, netVals); err != nil {
				b.Fatal(err)
			}
		}
	}
	bump(1)
	collect(b, c) // the first collection walks the hierarchy
	b.ResetTimer()
	var batchSeries int
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		bump(uint64(i + 2))
		b.StartTimer()
		batch := collect(b, c)
		batchSeries = len(batch.Points)
	}
	b.StopTimer()
	if batchSeries < 1000 {
		b.Fatalf("a collection wrote %d points for 1,000 active cgroups", batchSeries)
	}
}
