package rapl

import (
	"log/slog"
	"time"

	"github.com/capstan-power/capstan/internal/sysattr"
)

// Packages is the host's CPU package energy: the package zones read together, each through its
// own Counter. It is not safe for concurrent use: one consumer reads it at its own pace.
type Packages struct {
	r        *sysattr.Reader
	now      func() time.Time
	zones    []*Zone
	counters []Counter
}

// OpenPackages finds the package zones under the sysfs root whose energy counter reads (RAPL
// counters are root-only on current kernels). Without any, Len is 0 and every reading is
// unknown. It takes no first reading: the first Delta or PackageWatts only starts an interval.
// A nil now is time.Now; a nil log says nothing.
func OpenPackages(sysfs string, now func() time.Time, log *slog.Logger) *Packages {
	if now == nil {
		now = time.Now
	}
	p := &Packages{r: sysattr.NewReader(nil), now: now}
	zones, err := Find(sysfs, p.r, log)
	if err != nil && log != nil {
		log.Warn("not reading RAPL package energy", "err", err)
	}
	for _, z := range zones {
		if !z.Package() {
			continue
		}
		if _, err := p.r.Uint(z.Energy); err != nil {
			continue
		}
		p.zones = append(p.zones, z)
	}
	p.counters = make([]Counter, len(p.zones))
	return p
}

// Len is the number of package zones read; 0 for a nil Packages.
func (p *Packages) Len() int {
	if p == nil {
		return 0
	}
	return len(p.zones)
}

// Close releases the counter files held open.
func (p *Packages) Close() error {
	if p == nil {
		return nil
	}
	return p.r.Close()
}

// read takes a reading of every package and returns their energy and power since the previous
// one. energyOK is false when a counter did not read or had no interval, or there is none;
// powerOK also when no time passed.
func (p *Packages) read() (joules, watts float64, at time.Time, energyOK, powerOK bool) {
	at = p.now()
	energyOK, powerOK = len(p.zones) > 0, len(p.zones) > 0
	for i, z := range p.zones {
		uj, err := p.r.Uint(z.Energy)
		if err != nil {
			energyOK, powerOK = false, false
			continue
		}
		s := p.counters[i].Update(z, uj, at)
		if !s.Interval {
			energyOK, powerOK = false, false
			continue
		}
		joules += s.DeltaJ
		w, ok := s.Watts()
		watts += w
		powerOK = powerOK && ok
	}
	return joules, watts, at, energyOK, powerOK
}

// Delta returns the packages' energy since the previous reading, in joules; false on the first
// reading, without packages, or when a counter did not read or went back with its range
// unknown.
func (p *Packages) Delta() (joules float64, ok bool) {
	joules, _, _, ok, _ = p.read()
	return joules, ok
}

// PackageWatts returns the packages' power since the previous reading and when it was read;
// false on the first reading, without packages, when a counter did not read or went back with
// its range unknown, or when no time passed.
func (p *Packages) PackageWatts() (watts float64, at time.Time, ok bool) {
	_, watts, at, _, ok = p.read()
	return watts, at, ok
}
