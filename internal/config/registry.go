package config

import (
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"
)

// registration is what a collector declares about itself: its defaults.
type registration struct {
	name     string
	enabled  bool
	interval time.Duration
}

var (
	registryMu sync.Mutex
	registry   = map[string]registration{}
)

// collectorName keeps names usable as one segment of a dotted key and of a flag name.
var collectorName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// RegisterCollector declares a collector so that collector.<name> is a known key and
// --collector.<name>, --no-collector.<name>, --collector.<name>.interval and
// --collector.<name>.timeout are flags. Collector packages call it from init(). It panics on a
// duplicate or malformed name and on an interval that Validate would reject, since either is a
// programming error that no configuration could fix.
func RegisterCollector(name string, enabledByDefault bool, interval time.Duration) {
	if !collectorName.MatchString(name) {
		panic(fmt.Sprintf("config: collector name %q must match %s", name, collectorName))
	}
	if interval < minCollectorInterval || interval > maxCollectorInterval {
		panic(fmt.Sprintf("config: collector %q: default interval %v is outside %v to %v",
			name, interval, minCollectorInterval, maxCollectorInterval))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("config: collector %q registered twice", name))
	}
	registry[name] = registration{name: name, enabled: enabledByDefault, interval: interval}
}

// RegisteredCollectors returns the names of the registered collectors, sorted.
func RegisteredCollectors() []string {
	regs := registrations()
	names := make([]string, len(regs))
	for i, r := range regs {
		names[i] = r.name
	}
	return names
}

// registrations returns a snapshot of the registry sorted by name.
func registrations() []registration {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := make([]registration, 0, len(registry))
	for _, r := range registry {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// lookupRegistration returns the named collector's registration.
func lookupRegistration(name string) (registration, bool) {
	registryMu.Lock()
	defer registryMu.Unlock()
	r, ok := registry[name]
	return r, ok
}
