//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Capstan workload attribution: on-CPU time and estimated cycles per cgroup and CPU from
// sched_switch, and socket bytes/packets per cgroup from cgroup_skb on the cgroup v2 root.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Big enough for a dense node; user space deletes cgroups that are gone.
#define MAX_CGROUPS 16384
#define MAX_CPUS 4096

struct cpu_usage {
	__u64 ns;
	__u64 cycles;
};

struct net_usage {
	__u64 rx_bytes;
	__u64 rx_packets;
	__u64 tx_bytes;
	__u64 tx_packets;
};

// Per-CPU values: each CPU updates only its own slot, so the hot path takes no lock.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct cpu_usage);
} cpu_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, __u64);
	__type(value, struct net_usage);
} net_usage SEC(".maps");

// The task this CPU switched to last, and its scheduler runtime then. Reading the scheduler's own
// sum_exec_runtime at both ends charges exactly what cpu.stat charges, and avoids a clock read.
struct running {
	__u64 runtime;
	__s32 pid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct running);
} running SEC(".maps");

// Current frequency of each CPU in kHz: seeded from cpufreq by user space, kept current by
// power:cpu_frequency. cpu_frequency may report another CPU's change, so this is a plain array.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} cpu_khz SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 zero = 0;
	struct running *r = bpf_map_lookup_elem(&running, &zero);
	if (!r)
		return 0;
	__s32 was = r->pid;
	__u64 start = r->runtime;
	r->pid = next->pid;
	r->runtime = next->se.sum_exec_runtime;
	// The idle task's time belongs to no workload.
	if (prev->pid == 0)
		return 0;
	// When prev's switch-in was not seen here (the first switch on a CPU, a pick the scheduler
	// made without a switch), take its slice as the fair class accounts it: the runtime since
	// it was last picked.
	if (was != prev->pid)
		start = prev->se.prev_sum_exec_runtime;
	__u64 delta = prev->se.sum_exec_runtime - start;
	// prev's cgroup v2 id, read through its BTF pointers: what bpf_get_current_cgroup_id returns,
	// without the helper call.
	__u64 cgid = prev->cgroups->dfl_cgrp->kn->id;
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 cycles = 0;
	__u32 *khz = bpf_map_lookup_elem(&cpu_khz, &cpu);
	// ns × kHz / 2^20 rather than / 10^6: a shift, not a division, on every switch. The unit is
	// 1.048576 cycles; user space only uses cycles as shares.
	if (khz)
		cycles = (delta * (__u64)*khz) >> 20;

	struct cpu_usage *u = bpf_map_lookup_elem(&cpu_usage, &cgid);
	if (!u) {
		struct cpu_usage fresh = { .ns = delta, .cycles = cycles };
		if (!bpf_map_update_elem(&cpu_usage, &cgid, &fresh, BPF_NOEXIST))
			return 0;
		// Another CPU inserted this cgroup between our lookup and insert: add to the entry
		// it made (our slot of it is zero) rather than drop this slice.
		u = bpf_map_lookup_elem(&cpu_usage, &cgid);
		if (!u)
			return 0;
	}
	// Plain adds: this CPU's slot, and sched_switch runs with interrupts off under the
	// runqueue lock, so nothing else on this CPU updates it meanwhile.
	u->ns += delta;
	u->cycles += cycles;
	return 0;
}

SEC("tp_btf/cpu_frequency")
int BPF_PROG(cpu_frequency, unsigned int state, unsigned int cpu_id)
{
	__u32 cpu = cpu_id;
	__u32 khz = state;
	bpf_map_update_elem(&cpu_khz, &cpu, &khz, BPF_ANY);
	return 0;
}

static __always_inline void count_skb(struct __sk_buff *skb, bool ingress)
{
	__u64 cgid = bpf_skb_cgroup_id(skb);
	struct net_usage *u = bpf_map_lookup_elem(&net_usage, &cgid);
	if (!u) {
		struct net_usage fresh = {};
		bpf_map_update_elem(&net_usage, &cgid, &fresh, BPF_NOEXIST);
		u = bpf_map_lookup_elem(&net_usage, &cgid);
		if (!u)
			return;
	}
	// Atomic adds, though the slot is this CPU's: cgroup_skb programs run with only migration
	// disabled, so a program on this CPU can be preempted (egress, in process context) or
	// interrupted by a softirq (ingress) between the read and the write of a plain +=, and one
	// of the two updates would be lost.
	if (ingress) {
		__sync_fetch_and_add(&u->rx_bytes, skb->len);
		__sync_fetch_and_add(&u->rx_packets, 1);
	} else {
		__sync_fetch_and_add(&u->tx_bytes, skb->len);
		__sync_fetch_and_add(&u->tx_packets, 1);
	}
}

// Counting never drops: both programs return 1 (pass).
SEC("cgroup_skb/ingress")
int skb_ingress(struct __sk_buff *skb)
{
	count_skb(skb, true);
	return 1;
}

SEC("cgroup_skb/egress")
int skb_egress(struct __sk_buff *skb)
{
	count_skb(skb, false);
	return 1;
}
