package rapl

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/sysattr"
)

func TestDelta(t *testing.T) {
	cases := []struct {
		prev, cur, max, want uint64
		ok                   bool
	}{
		{100, 300, 1000, 200, true},
		{900, 100, 1000, 200, true}, // wrapped
		{900, 100, 0, 0, false},     // went back, range unknown
		{5, 5, 1000, 0, true},
		{1100, 100, 1000, 0, false}, // the previous reading was beyond the range: not a wrap
	}
	for _, tc := range cases {
		got, ok := Delta(tc.prev, tc.cur, tc.max)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Delta(%d, %d, %d) = %d, %v; want %d, %v", tc.prev, tc.cur, tc.max, got, ok, tc.want, tc.ok)
		}
	}
}

func TestFindOnAFixtureHost(t *testing.T) {
	zones, err := Find(hostfixtures.Sysfs(hostfixtures.Intel), sysattr.NewReader(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	type zone struct {
		id, name string
		pkg      bool
	}
	want := []zone{{"intel-rapl:0", "package", true}, {"intel-rapl:0:0", "dram", false}, {"intel-rapl:1", "package", true}, {"intel-rapl:1:0", "dram", false}}
	if len(zones) != len(want) {
		t.Fatalf("found %d zones, want %d", len(zones), len(want))
	}
	for i, z := range zones {
		if got := (zone{z.ID, z.Name, z.Package()}); got != want[i] {
			t.Errorf("zone %d = %+v, want %+v", i, got, want[i])
		}
		if z.MaxMicrojoules == 0 {
			t.Errorf("zone %s: range unknown, want max_energy_range_uj", z.ID)
		}
	}
	if zones, err := Find(t.TempDir(), sysattr.NewReader(nil), nil); err != nil || len(zones) != 0 {
		t.Errorf("a host without powercap: %d zones, %v; want none and no error", len(zones), err)
	}
}

// zoneDir makes class/powercap/<id> with name under a fake sysfs; maxUJ 0 leaves out
// max_energy_range_uj. It returns a function that sets energy_uj.
func zoneDir(t *testing.T, sysfs, id, name string, maxUJ uint64) func(uint64) {
	t.Helper()
	dir := filepath.Join(sysfs, "class", "powercap", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(file, v string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("name", name)
	if maxUJ > 0 {
		write("max_energy_range_uj", strconv.FormatUint(maxUJ, 10))
	}
	write("energy_uj", "0")
	return func(v uint64) { write("energy_uj", strconv.FormatUint(v, 10)) }
}

func TestPackagesWrapAndUnknownRange(t *testing.T) {
	t.Run("wrap", func(t *testing.T) {
		sysfs := t.TempDir()
		set := zoneDir(t, sysfs, "intel-rapl:0", "package-0", 1000)
		p := OpenPackages(sysfs, nil, nil)
		set(990)
		if _, ok := p.Delta(); ok {
			t.Fatal("first reading gave an interval")
		}
		// 990 → 1000 is 10 µJ, then 0 → 5 five: 15 (the counter's range is its modulus).
		set(5)
		if j, ok := p.Delta(); !ok || math.Abs(j-15e-6) > 1e-15 {
			t.Errorf("wrap from 990 to 5 (max 1000) = %g J, %v; want 15 µJ", j, ok)
		}
	})
	t.Run("no max_energy_range_uj", func(t *testing.T) {
		sysfs := t.TempDir()
		set := zoneDir(t, sysfs, "intel-rapl:0", "package-0", 0)
		p := OpenPackages(sysfs, nil, nil)
		set(500)
		p.Delta()
		// A decrease without a known range is a reset: the interval is skipped, not ~1.8e13 J.
		set(100)
		if j, ok := p.Delta(); ok {
			t.Errorf("counter 500 → 100 with no range = %g J, counted; want the interval skipped", j)
		}
		set(300)
		if j, ok := p.Delta(); !ok || j != 200e-6 {
			t.Errorf("after the reset, 100 → 300 = %g J, %v; want 200 µJ", j, ok)
		}
	})
}

// Package power is the sum over whole packages: not the zones inside them (core, dram), not
// the platform (psys), not the mmio copies of the packages.
func TestPackageWattsSumsWholePackages(t *testing.T) {
	sysfs := t.TempDir()
	const rangeUJ = 262_143_328_850
	counters := map[string]func(uint64){
		"package-0": zoneDir(t, sysfs, "intel-rapl:0", "package-0", rangeUJ),
		"core":      zoneDir(t, sysfs, "intel-rapl:0:0", "core", rangeUJ),
		"package-1": zoneDir(t, sysfs, "intel-rapl:1", "package-1", rangeUJ),
		"dram":      zoneDir(t, sysfs, "intel-rapl:1:0", "dram", rangeUJ),
		"psys":      zoneDir(t, sysfs, "intel-rapl:2", "psys", rangeUJ),
		"mmio":      zoneDir(t, sysfs, "intel-rapl-mmio:0", "package-0", rangeUJ),
	}
	watts := map[string]uint64{"package-0": 180, "core": 120, "package-1": 170, "dram": 30, "psys": 500, "mmio": 180}
	clk := clock.NewManual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	p := OpenPackages(sysfs, clk.Now, nil)
	if p.Len() != 2 {
		t.Fatalf("%d package zones, want 2", p.Len())
	}
	if _, _, ok := p.PackageWatts(); ok {
		t.Fatal("power from a first reading")
	}
	for s := uint64(1); s <= 3; s++ {
		clk.Advance(time.Second)
		for name, set := range counters {
			set(watts[name] * 1_000_000 * s)
		}
		w, at, ok := p.PackageWatts()
		if !ok || math.Abs(w-350) > 1e-9 || !at.Equal(clk.Now()) {
			t.Errorf("second %d: %v W at %v, %v; want the two packages' 350 W at %v", s, w, at, ok, clk.Now())
		}
	}
	if err := os.Remove(filepath.Join(sysfs, "class/powercap/intel-rapl:1/energy_uj")); err != nil {
		t.Fatal(err)
	}
	p.Close() // the held descriptor would still read the removed file
	clk.Advance(time.Second)
	if w, _, ok := p.PackageWatts(); ok {
		t.Errorf("%v W with a package's counter unreadable; want no reading", w)
	}
}
