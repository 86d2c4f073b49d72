// Command soak runs Capstan's chaos soak (`make soak`): the real agent, capstanctl, a
// three-member etcd cluster, the OpenTelemetry Collector's OTLP receiver and Prometheus, every
// fault kind on a seeded schedule, invariants checked from the outside. It writes
// soak-report.json and soak.png under -out and exits 1 on any violation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/capstan-power/capstan/internal/soak"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == soak.MemberCommand {
		if err := soak.RunMember(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	cfg := soak.Config{}
	flag.DurationVar(&cfg.Duration, "duration", 5*time.Minute, "length of the run, start-up and final checks included (at least 3m)")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the fault schedule and the simulated GPUs")
	flag.StringVar(&cfg.Out, "out", "soak-out", "directory for soak-report.json, soak.png and logs/")
	flag.StringVar(&cfg.Repo, "repo", ".", "the Capstan checkout the binaries are built from")
	flag.StringVar(&cfg.Prometheus, "prometheus", "bin/tools/prometheus", "the prometheus binary")
	flag.IntVar(&cfg.Agents, "agents", 4, "agents (nodes) in the group, at least 3")
	flag.IntVar(&cfg.GPUs, "gpus", 4, "simulated H100s per agent")
	flag.DurationVar(&cfg.Period, "period", time.Second, "the agents' control period")
	flag.DurationVar(&cfg.Settle, "settle", 5*time.Second, "how long after a budget cut Σ limits may stay above the new budget")
	flag.Float64Var(&cfg.AlertForScale, "alert-for-scale", 0.1, "factor on every alert rule's for: (a short run cannot wait 5 minutes)")
	flag.DurationVar(&cfg.FaultEvery, "fault-every", 15*time.Second, "spacing of the faults drawn once every kind ran")
	flag.DurationVar(&cfg.OTLPInterval, "otlp-interval", 5*time.Second, "the agents' OTLP export interval")
	flag.Parse()
	if cfg.Duration < 3*time.Minute || cfg.Agents < 3 || cfg.GPUs < 1 {
		fmt.Fprintln(os.Stderr, "soak: -duration must be at least 3m, -agents at least 3 and -gpus at least 1")
		os.Exit(2)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	cfg.Self = self
	for _, p := range []*string{&cfg.Out, &cfg.Repo, &cfg.Prometheus} {
		if *p, err = filepath.Abs(*p); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := soak.Run(ctx, cfg)
	if rep != nil {
		fmt.Print(rep.Summary())
		fmt.Printf("report: %s\nplot:   %s\n", filepath.Join(cfg.Out, "soak-report.json"), filepath.Join(cfg.Out, "soak.png"))
	}
	if err != nil {
		if rep == nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
		}
		os.Exit(1)
	}
}
