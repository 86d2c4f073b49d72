package cpufreq

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

func collect(t *testing.T, c *Collector) *sample.Batch {
	t.Helper()
	return testkit.Collect(t, Name, c)
}

var (
	cpuN  = func(n int) attribute.KeyValue { return attribute.Int(metrics.AttrCPULogicalNumber, n) }
	kind  = func(k string) attribute.KeyValue { return attribute.String(metrics.AttrLimitKind, k) }
	scope = func(s string) attribute.KeyValue { return attribute.String(metrics.AttrThrottleScope, s) }
	str   = attribute.String
)

func TestFixtureHosts(t *testing.T) {
	type want struct {
		def   *metrics.Def
		attrs []attribute.KeyValue
		value float64
	}
	cases := []struct {
		host  string
		cpus  int
		wants []want
	}{
		{hostfixtures.Intel, 4, []want{
			// intel_pstate has no cpuinfo_cur_freq: scaling_cur_freq, kHz to Hz.
			{metrics.CPUFrequency, []attribute.KeyValue{cpuN(1)}, 3.1e9},
			{metrics.CPUFrequency, []attribute.KeyValue{cpuN(2)}, 0.8e9},
			{metrics.CPUFrequencyLimit, []attribute.KeyValue{cpuN(0), kind("hardware_min")}, 0.8e9},
			{metrics.CPUFrequencyLimit, []attribute.KeyValue{cpuN(0), kind("hardware_max")}, 3.8e9},
			{metrics.CPUFrequencyLimit, []attribute.KeyValue{cpuN(3), kind("scaling_max")}, 3.8e9},
			{metrics.CPUGovernor, []attribute.KeyValue{cpuN(2), str(metrics.AttrCPUGovernor, "powersave"),
				str(metrics.AttrCPUFreqDriver, "intel_pstate"), str(metrics.AttrCPUEPP, "balance_performance")}, 1},
			{metrics.CPUThrottleEvents, []attribute.KeyValue{scope("core"), cpuN(3)}, 9},
			{metrics.CPUThrottleEvents, []attribute.KeyValue{scope("package"), str(metrics.AttrCPUPackage, "1")}, 9},
			{metrics.CPUThrottleEvents, []attribute.KeyValue{scope("package"), str(metrics.AttrCPUPackage, "0")}, 2},
		}},
		{hostfixtures.AMD, 8, []want{
			// acpi-cpufreq has cpuinfo_cur_freq (1000 kHz above scaling_cur_freq in the fixture).
			{metrics.CPUFrequency, []attribute.KeyValue{cpuN(1)}, 1.976e9},
			{metrics.CPUFrequencyLimit, []attribute.KeyValue{cpuN(7), kind("hardware_max")}, 2.45e9},
			{metrics.CPUGovernor, []attribute.KeyValue{cpuN(0), str(metrics.AttrCPUGovernor, "schedutil"),
				str(metrics.AttrCPUFreqDriver, "acpi-cpufreq")}, 1},
		}},
		{hostfixtures.Big, 192, []want{
			{metrics.CPUFrequency, []attribute.KeyValue{cpuN(191)}, 2.2e9},
			{metrics.CPUThrottleEvents, []attribute.KeyValue{scope("core"), cpuN(191)}, 573},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.host, func(t *testing.T) {
			c, err := New(hostfixtures.Sysfs(tc.host), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			b := collect(t, c)
			if n := b.Count(metrics.CPUFrequency); n != tc.cpus {
				t.Errorf("%d frequency points, want one per CPU (%d)", n, tc.cpus)
			}
			if n := b.Count(metrics.CPUGovernor); n != tc.cpus {
				t.Errorf("%d governor points, want %d", n, tc.cpus)
			}
			for _, w := range tc.wants {
				got, ok := b.Find(w.def, w.attrs...)
				if !ok {
					t.Errorf("%s %v missing", w.def.Name, w.attrs)
				} else if got != w.value {
					t.Errorf("%s %v = %v, want %v", w.def.Name, w.attrs, got, w.value)
				}
			}
		})
	}
}

func TestAMDHasNoEPPOrThrottleCounters(t *testing.T) {
	c, err := New(hostfixtures.Sysfs(hostfixtures.AMD), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := collect(t, c)
	if n := b.Count(metrics.CPUThrottleEvents); n != 0 {
		t.Errorf("%d throttle points on a host without thermal_throttle", n)
	}
	for _, p := range b.Points {
		if _, ok := p.Series.Attrs.Value(metrics.AttrCPUEPP); ok {
			t.Fatalf("EPP attribute on a driver without EPP: %v", p.Series.Attrs.ToSlice())
		}
	}
}

func TestGovernorChangeIsSeen(t *testing.T) {
	root := hostfixtures.Copy(t, hostfixtures.Intel)
	c, err := New(root, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	collect(t, c)
	policy := filepath.Join(root, "devices/system/cpu/cpufreq/policy1")
	for f, v := range map[string]string{"scaling_governor": "performance\n", "energy_performance_preference": "performance\n", "scaling_max_freq": "2000000\n"} {
		if err := os.WriteFile(filepath.Join(policy, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := collect(t, c)
	if _, ok := b.Find(metrics.CPUGovernor, cpuN(1), str(metrics.AttrCPUGovernor, "performance"), str(metrics.AttrCPUEPP, "performance")); !ok {
		t.Error("the new governor and EPP are not reported")
	}
	if _, ok := b.Find(metrics.CPUGovernor, cpuN(1), str(metrics.AttrCPUGovernor, "powersave")); ok {
		t.Error("the old governor is still reported")
	}
	if v, _ := b.Find(metrics.CPUFrequencyLimit, cpuN(1), kind("scaling_max")); v != 2e9 {
		t.Errorf("scaling_max %v after the write, want 2e9", v)
	}
}

func TestReadErrorsSkipTheFileAndAreLoggedOnce(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.ENODATA, syscall.EACCES} {
		t.Run(errno.Error(), func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			f := &hostfixtures.Faults{Err: errno, Suffixes: []string{"cpu2/cpufreq/scaling_cur_freq", "cpu3/thermal_throttle/core_throttle_count"}}
			c, err := New(hostfixtures.Sysfs(hostfixtures.Intel), log, f.Read)
			if err != nil {
				t.Fatal(err)
			}
			var b *sample.Batch
			for range 3 {
				b = collect(t, c)
			}
			if _, ok := b.Find(metrics.CPUFrequency, cpuN(2)); ok {
				t.Error("CPU 2's frequency reported although its read failed")
			}
			if _, ok := b.Find(metrics.CPUFrequency, cpuN(3)); !ok {
				t.Error("CPU 3's frequency missing: one bad file must not hide the others")
			}
			if _, ok := b.Find(metrics.CPUThrottleEvents, scope("core"), cpuN(3)); ok {
				t.Error("CPU 3's throttle count reported although its read failed")
			}
			if n := strings.Count(logs.String(), "skipping a sysfs file"); n != 2 {
				t.Errorf("%d log lines for 2 failing files over 3 collections, want 2:\n%s", n, logs.String())
			}
			f.Suffixes = nil
			b = collect(t, c)
			if _, ok := b.Find(metrics.CPUFrequency, cpuN(2)); !ok {
				t.Error("CPU 2's frequency not reported after its file recovered")
			}
			if !strings.Contains(logs.String(), "readable again") {
				t.Error("recovery not logged")
			}
		})
	}
}

func TestEveryFrequencyFailingFailsTheCollection(t *testing.T) {
	f := &hostfixtures.Faults{Err: syscall.EIO, Suffixes: []string{"scaling_cur_freq"}}
	c, err := New(hostfixtures.Sysfs(hostfixtures.Intel), slog.New(slog.DiscardHandler), f.Read)
	if err != nil {
		t.Fatal(err)
	}
	b := &sample.Batch{}
	err = c.Collect(context.Background(), b)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("collect: %v, want an error wrapping EIO", err)
	}
}

func TestMissingFilesAfterStart(t *testing.T) {
	root := hostfixtures.Copy(t, hostfixtures.Intel)
	c, err := New(root, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	// CPU 3 goes offline: its policy directory disappears.
	if err := os.RemoveAll(filepath.Join(root, "devices/system/cpu/cpufreq/policy3")); err != nil {
		t.Fatal(err)
	}
	b := collect(t, c)
	if n := b.Count(metrics.CPUFrequency); n != 3 {
		t.Errorf("%d frequency points with one CPU gone, want 3", n)
	}
}

func TestNoCpufreqIsNoSource(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "devices/system/cpu/cpu0"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := New(root, nil, nil)
	if !errors.Is(err, collectors.ErrNoSource) {
		t.Fatalf("New on a host without cpufreq: %v, want ErrNoSource", err)
	}
}

func TestSteadyCollectionAllocatesLittle(t *testing.T) {
	c, err := New(hostfixtures.Sysfs(hostfixtures.Big), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := collect(t, c)
	allocs := testing.AllocsPerRun(5, func() {
		b.Reset(Name, time.Now())
		if err := c.Collect(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	})
	// 192 CPUs, about 1300 points: a steady collection builds no series.
	if allocs > 10 {
		t.Errorf("%v allocations per steady collection of 192 CPUs, want at most 10", allocs)
	}
}

func TestCollectStopsAtItsDeadline(t *testing.T) {
	c, err := New(hostfixtures.Sysfs(hostfixtures.Big), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Collect(ctx, &sample.Batch{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("collect with a done context: %v, want context.Canceled", err)
	}
}

// A governor change seen while the EPP read fails must still be reported once the EPP reads
// again: the governor name is saved only with the series it labels.
func TestGovernorChangeSurvivesAFailedEPPRead(t *testing.T) {
	root := hostfixtures.Copy(t, hostfixtures.Intel)
	f := &hostfixtures.Faults{Err: syscall.EIO}
	c, err := New(root, slog.New(slog.DiscardHandler), f.Read)
	if err != nil {
		t.Fatal(err)
	}
	collect(t, c)
	policy := filepath.Join(root, "devices/system/cpu/cpufreq/policy1")
	if err := os.WriteFile(filepath.Join(policy, "scaling_governor"), []byte("performance\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.Suffixes = []string{"cpu1/cpufreq/energy_performance_preference"}
	b := collect(t, c)
	if _, ok := b.Find(metrics.CPUGovernor, cpuN(1)); ok {
		t.Error("CPU 1's info reported although its EPP read failed")
	}
	f.Suffixes = nil
	for i := range 2 {
		b = collect(t, c)
		if _, ok := b.Find(metrics.CPUGovernor, cpuN(1), str(metrics.AttrCPUGovernor, "performance")); !ok {
			t.Errorf("collection %d after the EPP recovered: the new governor is not reported", i+1)
		}
		if _, ok := b.Find(metrics.CPUGovernor, cpuN(1), str(metrics.AttrCPUGovernor, "powersave")); ok {
			t.Errorf("collection %d after the EPP recovered: the old governor is still reported", i+1)
		}
	}
}
