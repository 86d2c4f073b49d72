package workload

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"

	cbpf "github.com/capstan-power/capstan/bpf"
)

// Every possible CPU id gets a frequency: a CPU left at 0 kHz counts no cycles, and since
// energy is split by cycles when there are any, its time would earn no energy.
func TestSeedFrequenciesCoversEveryPossibleCPU(t *testing.T) {
	requireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		khz  string // cpu0's scaling_cur_freq; no other CPU has a reading
		want uint32
	}{
		{"one reading", "2400000\n", 2400000}, // the highest known reading
		{"no reading", "", nominalKHz},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 4096})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = m.Close() }()
			sysfs := t.TempDir()
			if tc.khz != "" {
				dir := filepath.Join(sysfs, "devices", "system", "cpu", "cpu0", "cpufreq")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "scaling_cur_freq"), []byte(tc.khz), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			seedFrequencies(m, sysfs)
			for cpu := uint32(0); cpu < uint32(ncpu); cpu++ {
				var got uint32
				if err := m.Lookup(cpu, &got); err != nil || got != tc.want {
					t.Errorf("CPU %d of %d possible: %d kHz (%v), want %d", cpu, ncpu, got, err, tc.want)
				}
			}
		})
	}
}

// The programs lose no counts to concurrency: sched_switch, whose insert of a new cgroup can
// lose to another CPU's, looks the entry up again and adds; cgroup_skb, which can be preempted
// or interrupted on its CPU mid-update, adds atomically. A race cannot be made to happen on
// demand, so this reads the compiled programs.
func TestProgramsKeepEveryCount(t *testing.T) {
	spec, err := cbpf.LoadWorkload()
	if err != nil {
		t.Fatal(err)
	}
	// mapCalls lists the helper calls of a program with the map each one is given in R1.
	mapCalls := func(prog string) (calls []string) {
		var r1 string
		for _, ins := range spec.Programs[prog].Instructions {
			switch {
			case ins.IsLoadFromMap() && ins.Dst == asm.R1:
				r1 = ins.Reference()
			case ins.IsBuiltinCall():
				calls = append(calls, asm.BuiltinFunc(ins.Constant).String()+"("+r1+")")
				r1 = ""
			}
		}
		return calls
	}
	calls := mapCalls("sched_switch")
	retried := false
	for i, call := range calls {
		if call == "FnMapUpdateElem(cpu_usage)" {
			for _, next := range calls[i+1:] {
				retried = retried || next == "FnMapLookupElem(cpu_usage)"
			}
		}
	}
	if !retried {
		t.Errorf("sched_switch does not look cpu_usage up again after inserting: %v", calls)
	}
	for _, prog := range []string{"skb_ingress", "skb_egress"} {
		atomics := 0
		for _, ins := range spec.Programs[prog].Instructions {
			if ins.OpCode.Class() == asm.StXClass && ins.OpCode.Mode() == asm.AtomicMode {
				atomics++
			}
		}
		if atomics < 2 {
			t.Errorf("%s has %d atomic adds, want one for bytes and one for packets", prog, atomics)
		}
	}
}

// The preallocated per-CPU maps stay within their memory budget on many-core hosts and keep
// their full size on small ones.
func TestMapEntriesBoundMapMemory(t *testing.T) {
	for _, tc := range []struct{ ncpu, want int }{
		{2, maxMapEntries}, {64, maxMapEntries}, {224, 4681}, {384, 2730}, {4096, minMapEntries},
	} {
		got := mapEntries(tc.ncpu)
		if got != tc.want {
			t.Errorf("mapEntries(%d) = %d, want %d", tc.ncpu, got, tc.want)
		}
		if got > minMapEntries && got*mapSlotBytes*tc.ncpu > mapBudget {
			t.Errorf("%d CPUs: %d entries take %d bytes, over the %d-byte budget", tc.ncpu, got, got*mapSlotBytes*tc.ncpu, mapBudget)
		}
	}
}
