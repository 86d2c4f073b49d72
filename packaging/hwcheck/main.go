// Command hwcheck checks Capstan against a real GPU node (make hwcheck): it runs `capstan
// collect` with the NVML backend, compares power, temperature, clocks, memory and utilisation
// with `nvidia-smi --query-gpu` within stated tolerances, reports GPM and MIG support, writes one
// power limit (the minimum + 10 W) on one GPU, reads it back and restores it, and prints a
// markdown report.
//
// Exit status: 0 when every check passed, 1 when one failed, 2 when the host has no NVIDIA
// driver (nothing to check), 3 on a usage error.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func main() {
	fs := flag.NewFlagSet("hwcheck", flag.ContinueOnError)
	capstan := fs.String("capstan", "bin/capstan", "the capstan binary to check")
	smi := fs.String("nvidia-smi", "nvidia-smi", "the nvidia-smi to compare with")
	library := fs.String("nvml-library", "", "path of libnvidia-ml.so.1; empty: the loader's search path")
	gpu := fs.Int("gpu", 0, "index of the GPU whose power limit is written and restored")
	noWrite := fs.Bool("no-write", false, "skip the power limit write")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(3)
	}
	var opts []nvml.LibraryOption
	if *library != "" {
		opts = append(opts, nvml.WithLibraryPath(*library))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := &check{
		lib:     nvml.New(opts...),
		out:     os.Stdout,
		errOut:  os.Stderr,
		gpu:     *gpu,
		noWrite: *noWrite,
		interrupted: func() bool {
			return ctx.Err() != nil
		},
		collect: func() ([]byte, error) {
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			// Only the GPU collector: the host collectors have nothing to compare here.
			cmd := exec.CommandContext(cctx, *capstan, "collect", "--json", "--gpu.backend=nvml",
				"--no-collector.nic", "--no-collector.cpufreq", "--no-collector.workload", "--no-collector.thermal")
			cmd.Stderr = os.Stderr
			return cmd.Output()
		},
		smi: func(query string) ([]byte, error) {
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			return exec.CommandContext(cctx, *smi, "--query-gpu="+query, "--format=csv,noheader,nounits").Output()
		},
	}
	code := c.run()
	if code == exitNoDriver {
		fmt.Fprintln(os.Stderr, "hwcheck: no NVIDIA driver on this host; nothing to check")
	}
	os.Exit(code)
}
