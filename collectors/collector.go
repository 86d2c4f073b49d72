// Package collectors holds the collector framework: the registry each collector package adds
// itself to from init(), and the runner that drives every enabled collector on its own interval
// with a deadline, writing batches to the sample store.
package collectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/sample"
)

// Collector turns one source into samples.
type Collector interface {
	// Collect appends this collection's points to b. ctx carries the collection's deadline; a
	// collector returns what it has when the context is done. A partial failure (one sensor) is
	// logged by the collector and is not an error; an error means the collection as a whole failed.
	Collect(ctx context.Context, b *sample.Batch) error
}

// Closer is implemented by collectors that hold resources (NVML handles, BPF objects).
type Closer interface {
	Close() error
}

// ErrNoSource means the collector's source does not exist on this host (no GPU, no BTF, no
// sysfs class). The collector is disabled with one log line and reports up=0; it is not a fault.
var ErrNoSource = errors.New("source not available on this host")

// Options is what a collector is built from.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// NVML is the GPU library shared by the GPU collector and the capping controller; nil when
	// the host has no GPU backend.
	NVML nvml.Interface
	// NVMLErr says why NVML is nil.
	NVMLErr error
	// Now is the clock; the sim backend and tests inject theirs.
	Now func() time.Time
}

// Factory registers a collector.
type Factory struct {
	Name             string
	EnabledByDefault bool
	Interval         time.Duration
	New              func(Options) (Collector, error)
}

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// Register adds a collector; collector packages call it from init(). Its flags
// (--collector.<name>, --no-collector.<name>, --collector.<name>.interval) follow from this.
func Register(f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[f.Name]; dup {
		panic(fmt.Sprintf("collector %q registered twice", f.Name))
	}
	registry[f.Name] = f
	config.RegisterCollector(f.Name, f.EnabledByDefault, f.Interval)
}

// Factories returns every registered collector, sorted by name.
func Factories() []Factory {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := make([]Factory, 0, len(registry))
	for _, f := range registry {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
