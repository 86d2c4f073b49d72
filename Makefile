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

# The embedded demo: 8 simulated H100s on the training trace, every collector, Prometheus on
# 127.0.0.1:9400 and a per-GPU table on the terminal every 5 s.
# Capping is on with a static budget of 70 % of the fleet's maximum (8 × 700 W = 5600 W), so the
# limits move on the terminal; the state file stays in bin/ so no root is needed.
RUN_FLAGS ?= --gpu.backend=sim --gpu.sim.model=H100 --gpu.sim.count=8 --gpu.sim.trace=training \
             --web.listen-address=127.0.0.1:9400 --summary.interval=5s \
             --capping.enabled --budget.watts=3920 --capping.state-file=bin/capping-state.json

.PHONY: all build run test test-short bench lint fmt generate clean tools

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/capstan ./cmd/capstan

run: build
	./bin/capstan $(RUN_FLAGS)

# The whole suite, root-only tests included (they skip, saying why, when not root).
test:
	$(GO) test -count=1 -timeout 20m ./...

test-short:
	$(GO) test -short -count=1 ./...

# Go benchmarks, then the agent binary itself for 60 s (CPU and peak RSS from /proc).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./...
	CAPSTAN_SOAK=60s $(GO) test -run '^TestSoak$$' -count=1 -v -timeout 5m ./cmd/capstan

generate:
	$(GO) generate ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

$(GOLANGCI_LINT):
	GOBIN=$(TOOLS_BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

tools: $(GOLANGCI_LINT)

lint: $(GOLANGCI_LINT)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

clean:
	rm -rf bin dist
