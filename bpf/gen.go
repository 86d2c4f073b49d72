// Package bpf holds Capstan's eBPF programs (CO-RE C compiled by clang through bpf2go) and the
// generated Go that embeds them, so building the agent needs no clang.
//
// vmlinux.h is generated once from a kernel's BTF (make vmlinux) and committed; `make generate`
// recompiles the programs from it, and CI checks the committed objects match their sources.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -go-package bpf -output-stem workload Workload workload.bpf.c -- -I. -O2 -g -Wall -Werror
