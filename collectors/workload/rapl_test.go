package workload

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// raplZoneDir makes class/powercap/intel-rapl:<n> under a fake sysfs; maxUJ 0 leaves out
// max_energy_range_uj. It returns a function that sets energy_uj.
func raplZoneDir(t *testing.T, sysfs string, n int, maxUJ uint64) func(uint64) {
	t.Helper()
	dir := filepath.Join(sysfs, "class", "powercap", "intel-rapl:"+strconv.Itoa(n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	set := func(name string, v uint64) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strconv.FormatUint(v, 10)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if maxUJ > 0 {
		set("max_energy_range_uj", maxUJ)
	}
	set("energy_uj", 0)
	return func(v uint64) { set("energy_uj", v) }
}

func TestRAPLWrapAndUnknownRange(t *testing.T) {
	t.Run("wrap", func(t *testing.T) {
		sysfs := t.TempDir()
		set := raplZoneDir(t, sysfs, 0, 1000)
		r := newRAPL(sysfs)
		set(990)
		if _, ok := r.delta(); ok {
			t.Fatal("first reading gave an interval")
		}
		// 990 → 1000 is 10 µJ, 1000 → 0 one more, 0 → 5 five: 16.
		set(5)
		if j, ok := r.delta(); !ok || j != 16e-6 {
			t.Errorf("wrap from 990 to 5 (max 1000) = %g J, %v; want 16 µJ", j, ok)
		}
	})
	t.Run("no max_energy_range_uj", func(t *testing.T) {
		sysfs := t.TempDir()
		set := raplZoneDir(t, sysfs, 0, 0)
		r := newRAPL(sysfs)
		set(500)
		r.delta()
		// A decrease without a known range is a reset: the interval is skipped, not ~1.8e13 J.
		set(100)
		if j, ok := r.delta(); ok {
			t.Errorf("counter 500 → 100 with no range = %g J, counted; want the interval skipped", j)
		}
		set(300)
		if j, ok := r.delta(); !ok || j != 200e-6 {
			t.Errorf("after the reset, 100 → 300 = %g J, %v; want 200 µJ", j, ok)
		}
	})
}
