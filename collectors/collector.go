// Package collectors holds the collector framework: the registry each collector package adds
// itself to from init() with one Factory, and the runner that drives every enabled collector on
// its own interval with a deadline, writing batches to the sample store.
//
// A Factory is the one declaration of a collector, after the OpenTelemetry Collector's
// component.Factory: its name, whether it is on by default, its interval and, when it has
// options of its own, a typed config struct with defaults (CreateDefaultConfig) that may check
// itself (Validate). Package config builds the collector.<name> keys, the collector's own
// section, the flags, the validation and the configuration reference from it.
package collectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
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

// Config is a collector's own options: a pointer to a struct whose yaml tags name its keys and
// whose help, range, oneof, format and required tags declare what package config shows and
// checks. It may implement Validator for rules that tags cannot say.
type Config any

// Validator is implemented by a Config that checks itself beyond its tags. Return a
// *FieldError to point the user at the key (and its file line or flag).
type Validator interface {
	Validate() error
}

// FieldError is a problem with one key of a collector's Config.
type FieldError struct {
	// Key is the field's yaml key inside the collector's section (key for <section>.key).
	Key string
	// Problem says what is wrong and what is allowed, after the value: "is not a regular
	// expression (…)".
	Problem string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Problem }

// Bounds of every collector's interval and timeout; Register holds defaults to them too.
const (
	MinInterval = 100 * time.Millisecond
	MaxInterval = time.Hour
	MinTimeout  = 10 * time.Millisecond
)

// Factory declares a collector.
type Factory struct {
	// Name is the collector's name in flags (--collector.<name>) and metrics.
	Name             string
	EnabledByDefault bool
	Interval         time.Duration
	// CreateDefaultConfig returns a new Config holding the collector's defaults; nil when the
	// collector has no options of its own.
	CreateDefaultConfig func() Config
	// Section is the top-level key the options live under (--<section>.<key>); empty means Name.
	Section string
	// New builds the collector from its Config (nil without CreateDefaultConfig), already
	// validated.
	New func(Settings, Config) (Collector, error)
}

// SectionKey is the top-level configuration key of the factory's options; "" when it has none.
func (f Factory) SectionKey() string {
	switch {
	case f.CreateDefaultConfig == nil:
		return ""
	case f.Section != "":
		return f.Section
	}
	return f.Name
}

// Settings is what every collector is built with besides its Config.
type Settings struct {
	Logger *slog.Logger
	// Now is the clock; the sim backend and tests inject theirs.
	Now func() time.Time
	// Sysfs and Procfs are the mount points of the kernel's pseudo-filesystems.
	Sysfs, Procfs string
	// NodeName names this host.
	NodeName string
	// Resources holds what the agent opens once for whoever needs it; see Lookup.
	Resources *Resources
	// MetricEnabled reports whether a metric is to be exported (metrics.NAME.enabled); nil
	// means every metric. The runner drops the points of the others; a collector may also
	// skip the reads that only they need.
	MetricEnabled func(*metrics.Def) bool
}

// Resources holds values by type, each opened on its first Lookup and then shared. The agent
// provides them (the GPU library) so that the framework names no source.
type Resources struct {
	mu sync.Mutex
	m  map[any]*resource
}

type resource struct {
	once sync.Once
	open func() (any, error)
	val  any
	err  error
}

// resourceKey is a distinct map key per type T.
type resourceKey[T any] struct{}

// Provide makes open the source of T in r; open runs at most once, on the first Lookup.
func Provide[T any](r *Resources, open func() (T, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[any]*resource{}
	}
	r.m[resourceKey[T]{}] = &resource{open: func() (any, error) { return open() }}
}

// Lookup returns the T the agent provides, opening it on first use. Without one it returns an
// error wrapping ErrNoSource; otherwise what opening it returned, every time.
func Lookup[T any](s Settings) (T, error) {
	var zero T
	if s.Resources == nil {
		return zero, fmt.Errorf("no %T provided: %w", zero, ErrNoSource)
	}
	s.Resources.mu.Lock()
	res, ok := s.Resources.m[resourceKey[T]{}]
	s.Resources.mu.Unlock()
	if !ok {
		return zero, fmt.Errorf("no %T provided: %w", zero, ErrNoSource)
	}
	res.once.Do(func() { res.val, res.err = res.open() })
	if res.err != nil {
		return zero, res.err
	}
	v, _ := res.val.(T)
	return v, nil
}

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// nameRule keeps names usable as one segment of a dotted key and of a flag name.
var nameRule = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Register adds a collector; collector packages call it from init(). It panics on a duplicate or
// malformed name, a default interval outside MinInterval to MaxInterval, a section another
// collector holds, or a missing New: each is a programming error that no configuration could fix.
func Register(f Factory) {
	if !nameRule.MatchString(f.Name) {
		panic(fmt.Sprintf("collectors: collector name %q must match %s", f.Name, nameRule))
	}
	if f.Section != "" && !nameRule.MatchString(f.Section) {
		panic(fmt.Sprintf("collectors: collector %q: section %q must match %s", f.Name, f.Section, nameRule))
	}
	if f.Interval < MinInterval || f.Interval > MaxInterval {
		panic(fmt.Sprintf("collectors: collector %q: default interval %v is outside %v to %v",
			f.Name, f.Interval, MinInterval, MaxInterval))
	}
	if f.New == nil {
		panic(fmt.Sprintf("collectors: collector %q has no New", f.Name))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[f.Name]; dup {
		panic(fmt.Sprintf("collectors: collector %q registered twice", f.Name))
	}
	if s := f.SectionKey(); s != "" {
		for _, o := range registry {
			if o.SectionKey() == s {
				panic(fmt.Sprintf("collectors: collectors %q and %q both declare section %q", o.Name, f.Name, s))
			}
		}
	}
	registry[f.Name] = f
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

// FactoryOf returns the named collector's factory.
func FactoryOf(name string) (Factory, bool) {
	registryMu.Lock()
	defer registryMu.Unlock()
	f, ok := registry[name]
	return f, ok
}

// Unregister removes collectors; tests that register their own call it when done.
func Unregister(names ...string) {
	registryMu.Lock()
	defer registryMu.Unlock()
	for _, n := range names {
		delete(registry, n)
	}
}
