# Capstan — build, run and test. `make run` and `make test` work on a fresh machine.
GO      ?= go
PKG     := github.com/capstan-power/capstan
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X $(PKG)/internal/version.Version=$(VERSION) \
           -X $(PKG)/internal/version.Commit=$(COMMIT) -X $(PKG)/internal/version.Date=$(DATE)

# go-nvml needs cgo (it dlopens libnvidia-ml at run time; no driver is needed to build).
# NVML's header marks many functions deprecated: that is NVIDIA's business, not a build warning.
export CGO_ENABLED := 1
export CGO_CFLAGS  := -O2 -Wno-deprecated-declarations

GOLANGCI_LINT_VERSION := v2.15.0
TOOLS_BIN := $(CURDIR)/bin/tools
GOLANGCI_LINT := $(TOOLS_BIN)/golangci-lint
# promtool checks and unit-tests deploy/prometheus's alert rules (go test ./deploy runs it). It
# builds from the Go module proxy once; without the service-discovery plugins (remove_all_sd),
# which rules do not use, that takes about 4 minutes on 2 shared cores instead of about 9.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := $(TOOLS_BIN)/promtool
# node_exporter is what `make bench` measures the host collectors against, on its own sysfs
# fixture (collector/fixtures/sys.ttar of the same module version).
NODE_EXPORTER_VERSION := v1.12.1
NODE_EXPORTER := $(TOOLS_BIN)/node_exporter

# The embedded demo: 8 simulated H100s on the training trace, every collector, Prometheus on
# 127.0.0.1:9400 and a per-GPU table on the terminal every 5 s.
# Capping is on with a static budget of 70 % of the fleet's maximum (8 × 700 W = 5600 W), so the
# limits move on the terminal; the state file stays in bin/ so no root is needed. The workload
# collector loads its eBPF programs as root and reads cgroup cpu.stat otherwise.
RUN_FLAGS ?= --gpu.backend=sim --gpu.sim.model=H100 --gpu.sim.count=8 --gpu.sim.trace=training \
             --web.listen-address=127.0.0.1:9400 --summary.interval=5s --collector.workload \
             --capping.enabled --budget.watts=3920 --capping.state-file=bin/capping-state.json

.PHONY: hwcheck all build run test test-short bench bench-cluster lint fmt generate docs vmlinux clean tools promtool prometheus packages image soak

all: build

# Every command under cmd/ that has Go files: capstan, capstanctl and capstan-simulate (the
# what-if simulator, which `capstan simulate` runs from beside capstan).
CMDS := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard cmd/*/*.go)))))

build:
	$(foreach c,$(CMDS),$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$(c) ./cmd/$(c) &&) true

run: build
	./bin/capstan $(RUN_FLAGS)

# The whole suite, root-only tests included (they skip, saying why, when not root).
test:
	$(GO) test -count=1 -timeout 20m ./...

test-short:
	$(GO) test -short -count=1 ./...

# Go benchmarks, then the agent binary itself for 60 s (CPU and peak RSS from /proc), then its
# host collectors beside node_exporter's on node_exporter's sysfs fixture, both scraped at 5 Hz
# for 60 s (CPU per scrape and peak RSS of each).
bench: $(NODE_EXPORTER)
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./...
	CAPSTAN_SOAK=60s $(GO) test -run '^TestSoak$$' -count=1 -v -timeout 5m ./cmd/capstan
	CAPSTAN_SIDE_BY_SIDE=60s CAPSTAN_NODE_EXPORTER=$(NODE_EXPORTER) \
		$(GO) test -run '^TestSideBySideNodeExporter$$' -count=1 -v -timeout 5m ./cmd/capstan

# On a node with an NVIDIA driver: capstan collect (NVML) against nvidia-smi, GPM and MIG support,
# one power limit written (minimum + 10 W), read back and restored; a markdown report on stdout.
# Exit 2 without a driver. HWCHECK_FLAGS: --gpu N (which GPU's limit), --no-write.
HWCHECK_FLAGS ?=
hwcheck: build
	$(GO) build -trimpath -o bin/hwcheck ./packaging/hwcheck
	./bin/hwcheck --capstan bin/capstan $(HWCHECK_FLAGS)

# The cluster budget at 10,000 members of one group against an embedded etcd (minutes; outside
# CI). The default `make bench` runs 1,000 agents with simulated GPUs and controllers; 10,000 of
# those do not fit on a small machine, so this runs members whose grants one loop applies.
bench-cluster:
	CAPSTAN_BENCH_NODES=10000 CAPSTAN_BENCH_MEMBERS_ONLY=1 $(GO) test -run '^$$' -bench 'GroupConvergence|WaterFill|AllocatorRound|TreeCut|DomainCut' -benchtime 1x -count=1 -timeout 30m ./capping/cluster

generate:
	$(GO) generate ./...

# The pictures in docs/, drawn from simulated runs on a simulated clock with fixed seeds: the
# same code gives the same bytes, so CI regenerates them and checks that they are committed.
# docs/simulate.png is what `capstan simulate --plot` draws, with the README's example
# (capstan-simulate is the program `capstan simulate` runs).
docs:
	$(GO) run ./capping/simulation/gen -o docs
	$(GO) run ./cmd/capstan-simulate --gpu.sim.trace=imbalanced --budget.watts=3360 --duration=1h \
		--budget.step=30m:2352 --plot docs/simulate.png >/dev/null

# bpf/vmlinux.h comes from a kernel's BTF and is committed; `make generate` (clang, llvm and
# libbpf-dev) compiles bpf/ from it. CO-RE relocates the programs to the running kernel.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

fmt:
	gofmt -w $$(git ls-files '*.go')

$(GOLANGCI_LINT):
	GOBIN=$(TOOLS_BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

$(PROMTOOL):
	GOBIN=$(TOOLS_BIN) CGO_ENABLED=0 $(GO) install -tags remove_all_sd github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

promtool: $(PROMTOOL)

# Built as its releases are (static, no cgo), from the module proxy.
$(NODE_EXPORTER):
	GOBIN=$(TOOLS_BIN) CGO_ENABLED=0 $(GO) install github.com/prometheus/node_exporter@$(NODE_EXPORTER_VERSION)

# The Prometheus server of the same module, which `make soak` starts: it scrapes the agents and
# evaluates deploy/prometheus's rules. Built once, like promtool.
PROMETHEUS := $(TOOLS_BIN)/prometheus

$(PROMETHEUS):
	GOBIN=$(TOOLS_BIN) CGO_ENABLED=0 $(GO) install -tags remove_all_sd github.com/prometheus/prometheus/cmd/prometheus@$(PROMTOOL_VERSION)

prometheus: $(PROMETHEUS)

# The chaos soak (docs/soak.md): real agents, a 3-member etcd cluster, the OTel Collector's
# receiver and Prometheus, every fault kind on a seeded schedule, invariants checked from the
# outside. SOAK is the whole run's length (SOAK=1h by hand), SOAK_SEED the schedule's seed;
# soak-report.json, soak.png and the logs go to SOAK_OUT. Fails on any violation.
SOAK      ?= 5m
SOAK_SEED ?= 1
SOAK_OUT  ?= bin/soak-out

soak: $(PROMETHEUS)
	$(GO) build -o bin/soak ./internal/soak/cmd/soak
	./bin/soak -duration=$(SOAK) -seed=$(SOAK_SEED) -out=$(SOAK_OUT) -prometheus=$(PROMETHEUS)

tools: $(GOLANGCI_LINT) $(PROMTOOL)

lint: $(GOLANGCI_LINT)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

# RPM and DEB packages for each of PKG_ARCHS into $(DIST), built by nfpm (a tool in go.mod)
# from packaging/nfpm.yaml. cgo (go-nvml) needs a C compiler per target: the host's gcc for its
# own architecture, Debian's gcc-aarch64-linux-gnu or gcc-x86-64-linux-gnu for the other.
HOST_ARCH   := $(shell $(GO) env GOHOSTARCH)
PKG_ARCHS   ?= amd64 arm64
PKG_VERSION ?= $(patsubst v%,%,$(shell git describe --tags --match 'v[0-9]*' 2>/dev/null || echo v0.1.0-dev+$(COMMIT)))
CC_amd64    ?= $(if $(filter amd64,$(HOST_ARCH)),gcc,x86_64-linux-gnu-gcc)
CC_arm64    ?= $(if $(filter arm64,$(HOST_ARCH)),gcc,aarch64-linux-gnu-gcc)

DIST        ?= dist

packages:
	rm -rf $(DIST)
	$(MAKE) $(addprefix package-,$(PKG_ARCHS))
	@ls -l $(DIST)

package-%:
	@command -v $(CC_$*) >/dev/null || { echo "$(CC_$*) is missing: apt-get install gcc-$(if $(filter arm64,$*),aarch64,x86-64)-linux-gnu" >&2; exit 1; }
	rm -rf bin/linux-$*
	$(foreach c,$(CMDS),GOOS=linux GOARCH=$* CC=$(CC_$*) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/linux-$*/$(c) ./cmd/$(c) &&) true
	mkdir -p $(DIST)
	for p in deb rpm; do PKG_ARCH=$* PKG_VERSION=$(PKG_VERSION) $(GO) tool nfpm package --config packaging/nfpm.yaml --packager $$p --target $(DIST)/ || exit 1; done

# The DaemonSet's container image (packaging/Dockerfile), with docker or podman.
IMAGE       ?= ghcr.io/capstan-power/capstan
IMAGE_TAG   ?= $(PKG_VERSION)
IMAGE_TOOL  ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)

image:
	$(IMAGE_TOOL) build -f packaging/Dockerfile --build-arg VERSION=$(PKG_VERSION) --build-arg COMMIT=$(COMMIT) \
		-t $(IMAGE):$(IMAGE_TAG) .

clean:
	rm -rf bin dist
