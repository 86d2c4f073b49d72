package sim

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/testkit"
)

// faultBench is a fleet whose fault file the test writes and polls by hand.
type faultBench struct {
	t     *testing.T
	f     *Fleet
	path  string
	state string
	log   *testkit.LogBuffer
	now   time.Time
	slept []time.Duration
}

func newFaultBench(t *testing.T) *faultBench {
	t.Helper()
	dir := t.TempDir()
	log, buf := testkit.NewLogger()
	b := &faultBench{t: t, path: filepath.Join(dir, "faults.json"), state: filepath.Join(dir, "devices.json"), log: buf, now: time.Now()}
	b.f = openFleet(t, Options{FaultFile: b.path, StateFile: b.state, Log: log, manualFiles: true})
	b.f.sleep = func(d time.Duration) { b.slept = append(b.slept, d) }
	return b
}

// write puts faults in the file and polls it.
func (b *faultBench) write(faults ...Fault) {
	b.t.Helper()
	data, err := json.Marshal(FaultFile{Faults: faults})
	if err != nil {
		b.t.Fatal(err)
	}
	b.writeRaw(string(data))
}

func (b *faultBench) writeRaw(content string) {
	b.t.Helper()
	if err := os.WriteFile(b.path, []byte(content), 0o600); err != nil {
		b.t.Fatal(err)
	}
	b.f.pollFaults(b.now)
}

func (b *faultBench) limit(i int) uint32 {
	b.t.Helper()
	g := b.f.GPU(i)
	g.mu.Lock()
	defer g.mu.Unlock()
	return milli(g.requestedW)
}

func power(g *GPU) nvml.Return { _, ret := g.GetPowerUsage(); return ret }

func TestFaultError(t *testing.T) {
	b := newFaultBench(t)
	b.write(Fault{ID: "f1", Kind: FaultError, GPU: -1, Calls: []string{"GetPowerUsage", "GetFieldValues"}, Code: "ERROR_TIMEOUT"})
	for i := range 4 {
		g := b.f.GPU(i)
		if ret := power(g); ret != nvml.ERROR_TIMEOUT {
			t.Errorf("GPU %d GetPowerUsage = %v, want ERROR_TIMEOUT", i, ret)
		}
		if ret := g.GetFieldValues([]nvml.FieldValue{{FieldId: nvml.FI_DEV_POWER_INSTANT}}); ret != nvml.ERROR_TIMEOUT {
			t.Errorf("GPU %d GetFieldValues = %v, want ERROR_TIMEOUT", i, ret)
		}
		if _, ret := g.GetTemperature(nvml.TEMPERATURE_GPU); ret != nvml.SUCCESS {
			t.Errorf("GPU %d GetTemperature, a call the fault does not name = %v", i, ret)
		}
	}
	if got := b.log.Count("fault injected"); got != 1 || !b.log.Contains("id=f1 kind=error") {
		t.Errorf("log has %d fault lines, want 1 naming f1:\n%s", got, b.log)
	}

	// One GPU, every call, the default code; a method answering through another matches by the
	// name the caller used.
	b.write(Fault{ID: "f2", Kind: FaultError, GPU: 2, Calls: []string{"*"}})
	for name, call := range deviceCalls {
		if ret := call(b.f.GPU(2)); ret != nvml.ERROR_UNKNOWN {
			t.Errorf("%s on GPU 2 = %v, want ERROR_UNKNOWN", name, ret)
		}
	}
	if ret := power(b.f.GPU(1)); ret != nvml.SUCCESS {
		t.Errorf("GPU 1 after f1 left the file: GetPowerUsage = %v", ret)
	}
	b.write(Fault{ID: "f3", Kind: FaultError, GPU: 0, Calls: []string{"GetCurrentClocksThrottleReasons"}})
	if _, ret := b.f.GPU(0).GetCurrentClocksThrottleReasons(); ret != nvml.ERROR_UNKNOWN {
		t.Errorf("GetCurrentClocksThrottleReasons = %v, want ERROR_UNKNOWN", ret)
	}
	if _, ret := b.f.GPU(0).GetCurrentClocksEventReasons(); ret != nvml.SUCCESS {
		t.Errorf("GetCurrentClocksEventReasons = %v, want SUCCESS", ret)
	}

	// until ends it; a past until never starts it.
	b.write(Fault{ID: "f4", Kind: FaultError, GPU: -1, Calls: []string{"*"}, Until: b.now.Add(time.Minute)},
		Fault{ID: "f5", Kind: FaultError, GPU: -1, Calls: []string{"GetTemperature"}, Until: b.now.Add(-time.Second)})
	if ret := power(b.f.GPU(0)); ret != nvml.ERROR_UNKNOWN {
		t.Errorf("before until: %v, want ERROR_UNKNOWN", ret)
	}
	b.now = b.now.Add(2 * time.Minute)
	b.f.pollFaults(b.now)
	if ret := power(b.f.GPU(0)); ret != nvml.SUCCESS {
		t.Errorf("after until: %v, want SUCCESS", ret)
	}
	if b.log.Contains("id=f5") {
		t.Error("a fault whose until had passed was logged as injected")
	}
	if b.f.active.Load() != nil {
		t.Error("no fault in force, yet the calls still check a fault set")
	}
}

func TestFaultHang(t *testing.T) {
	b := newFaultBench(t)
	b.write(Fault{ID: "h", Kind: FaultHang, GPU: 3, Calls: []string{"*"}, Duration: "30s"})
	if ret := power(b.f.GPU(3)); ret != nvml.SUCCESS {
		t.Errorf("a hung call then proceeds: %v, want SUCCESS", ret)
	}
	if ret := power(b.f.GPU(0)); ret != nvml.SUCCESS {
		t.Errorf("another GPU: %v", ret)
	}
	if !slices.Equal(b.slept, []time.Duration{30 * time.Second}) {
		t.Errorf("hangs = %v, want one of 30s on GPU 3 only", b.slept)
	}
}

func TestFaultHangBlocksTheCall(t *testing.T) {
	b := newFaultBench(t)
	release := make(chan struct{})
	b.f.sleep = func(time.Duration) { <-release }
	b.write(Fault{ID: "h", Kind: FaultHang, GPU: 0, Calls: []string{"GetPowerUsage"}, Duration: "1h"})
	done := make(chan nvml.Return)
	go func() { done <- power(b.f.GPU(0)) }()
	if ret := power(b.f.GPU(1)); ret != nvml.SUCCESS {
		t.Errorf("another GPU while one hangs: %v", ret)
	}
	select {
	case ret := <-done:
		t.Fatalf("the hung call returned %v before its hang ended", ret)
	default:
	}
	close(release)
	if ret := <-done; ret != nvml.SUCCESS {
		t.Errorf("after the hang: %v", ret)
	}
}

func TestFaultLostAndBackAtDefault(t *testing.T) {
	b := newFaultBench(t)
	mustOK(t, "SetPowerManagementLimit", b.f.GPU(2).SetPowerManagementLimit(300_000))
	b.write(Fault{ID: "l", Kind: FaultLost, GPU: 2})
	for name, call := range deviceCalls {
		if ret := call(b.f.GPU(2)); ret != nvml.ERROR_GPU_IS_LOST {
			t.Errorf("%s on the lost GPU = %v, want ERROR_GPU_IS_LOST", name, ret)
		}
	}
	if _, ret := b.f.DeviceGetHandleByIndex(2); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("DeviceGetHandleByIndex(2) = %v, want ERROR_GPU_IS_LOST", ret)
	}
	if ret := power(b.f.GPU(1)); ret != nvml.SUCCESS {
		t.Errorf("another GPU: %v", ret)
	}
	b.f.writeState()
	if s := readState(t, b.state); s.GPUs[2].Present || !s.GPUs[1].Present {
		t.Errorf("state file: GPU 2 present %v, GPU 1 present %v; want false, true", s.GPUs[2].Present, s.GPUs[1].Present)
	}

	b.write() // removed: back, as after a driver reload
	if ret := power(b.f.GPU(2)); ret != nvml.SUCCESS {
		t.Errorf("after the fault left: %v", ret)
	}
	if got := b.limit(2); got != 700_000 {
		t.Errorf("limit after coming back = %d, want the default 700000", got)
	}
	b.f.writeState()
	if s := readState(t, b.state); !s.GPUs[2].Present || s.GPUs[2].LimitWriter != WriterReload {
		t.Errorf("state file after coming back: %+v", s.GPUs[2])
	}

	// until ends it too.
	b.write(Fault{ID: "l2", Kind: FaultLost, GPU: -1, Until: b.now.Add(time.Second)})
	if ret := power(b.f.GPU(0)); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("every GPU lost: %v", ret)
	}
	b.now = b.now.Add(time.Second)
	b.f.pollFaults(b.now)
	if ret := power(b.f.GPU(0)); ret != nvml.SUCCESS {
		t.Errorf("after until: %v", ret)
	}
}

// TestFaultLostSurvivesRestart checks that a GPU lost when the agent died is still lost in the
// next agent while the fault holds, and comes back at its default when it ends.
func TestFaultLostSurvivesRestart(t *testing.T) {
	b := newFaultBench(t)
	mustOK(t, "SetPowerManagementLimit", b.f.GPU(1).SetPowerManagementLimit(300_000))
	b.write(Fault{ID: "l", Kind: FaultLost, GPU: 1})
	b.f.writeState() // the agent is killed here

	again := openFleet(t, Options{FaultFile: b.path, StateFile: b.state, manualFiles: true})
	if ret := power(again.GPU(1)); ret != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("after a restart with the fault in force: %v, want ERROR_GPU_IS_LOST", ret)
	}
	if err := os.WriteFile(b.path, []byte(`{"faults":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	again.pollFaults(b.now)
	if ret := power(again.GPU(1)); ret != nvml.SUCCESS {
		t.Errorf("after the fault left: %v", ret)
	}
	if got, _ := again.GPU(1).GetPowerManagementLimit(); got != 700_000 {
		t.Errorf("limit = %d, want the default 700000", got)
	}
}

func TestFaultSetLimitOnce(t *testing.T) {
	b := newFaultBench(t)
	b.write(Fault{ID: "s", Kind: FaultSetLimit, GPU: 1, LimitMW: 300_000})
	if got := b.limit(1); got != 300_000 {
		t.Fatalf("limit after set-limit = %d, want 300000", got)
	}
	if got := b.limit(0); got != 700_000 {
		t.Errorf("another GPU's limit = %d", got)
	}
	if enf, _ := b.f.GPU(1).GetEnforcedPowerLimit(); enf != 300_000 {
		t.Errorf("enforced = %d, want 300000", enf)
	}
	mustOK(t, "SetPowerManagementLimit", b.f.GPU(1).SetPowerManagementLimit(500_000))
	b.f.pollFaults(b.now)
	b.writeRaw(`{"faults":[{"id":"s","kind":"set-limit","gpu":1,"limit_mw":300000}]} `)
	if got := b.limit(1); got != 500_000 {
		t.Errorf("set-limit applied twice: limit %d, want the agent's 500000", got)
	}
	b.f.writeState()
	if s := readState(t, b.state); !slices.Equal(s.Applied, []string{"s"}) {
		t.Errorf("applied = %v, want [s]", s.Applied)
	}

	// Nor in the next agent: it happened to the hardware once.
	again := openFleet(t, Options{FaultFile: b.path, StateFile: b.state, manualFiles: true})
	if got, _ := again.GPU(1).GetPowerManagementLimit(); got != 500_000 {
		t.Errorf("after a restart: limit %d, want 500000", got)
	}

	b.write(Fault{ID: "s2", Kind: FaultSetLimit, GPU: -1, LimitMW: 250_000})
	b.f.writeState()
	for i, g := range readState(t, b.state).GPUs {
		if g.LimitMW != 250_000 || g.LimitWriter != WriterOutOfBand {
			t.Errorf("GPU %d after set-limit on every GPU: %d by %q", i, g.LimitMW, g.LimitWriter)
		}
	}
}

func TestFaultRefuseWrites(t *testing.T) {
	b := newFaultBench(t)
	b.write(Fault{ID: "r", Kind: FaultRefuseWrites, GPU: -1})
	if ret := b.f.GPU(0).SetPowerManagementLimit(400_000); ret != nvml.ERROR_NO_PERMISSION {
		t.Errorf("refused write = %v, want ERROR_NO_PERMISSION", ret)
	}
	if got := b.limit(0); got != 700_000 {
		t.Errorf("a refused write changed the limit to %d", got)
	}
	if ret := power(b.f.GPU(0)); ret != nvml.SUCCESS {
		t.Errorf("reads while writes are refused: %v", ret)
	}
	b.write(Fault{ID: "r2", Kind: FaultRefuseWrites, GPU: 1, Code: "ERROR_UNKNOWN"})
	if ret := b.f.GPU(1).SetPowerManagementLimit(400_000); ret != nvml.ERROR_UNKNOWN {
		t.Errorf("with code ERROR_UNKNOWN = %v", ret)
	}
	mustOK(t, "SetPowerManagementLimit on another GPU", b.f.GPU(0).SetPowerManagementLimit(400_000))
}

func TestFaultReload(t *testing.T) {
	b := newFaultBench(t)
	for i := range 4 {
		mustOK(t, "SetPowerManagementLimit", b.f.GPU(i).SetPowerManagementLimit(300_000))
	}
	b.write(Fault{ID: "rl", Kind: FaultReload, GPU: 2}) // gpu is ignored: a reload is every GPU
	for i := range 4 {
		if got := b.limit(i); got != 700_000 {
			t.Errorf("GPU %d after a reload: %d, want the default 700000", i, got)
		}
	}
	mustOK(t, "SetPowerManagementLimit", b.f.GPU(0).SetPowerManagementLimit(300_000))
	b.f.pollFaults(b.now)
	if got := b.limit(0); got != 300_000 {
		t.Errorf("the reload ran twice: GPU 0 at %d", got)
	}
}

func TestFaultFileBadContentKeepsFaults(t *testing.T) {
	b := newFaultBench(t)
	b.write(Fault{ID: "f", Kind: FaultError, GPU: 0, Calls: []string{"GetPowerUsage"}})
	bad := []struct{ content, want string }{
		{`{"faults":[`, "does not parse"},
		{`{"faults":[{"id":"x","kind":"melt","gpu":0}]}`, `kind \"melt\" is not one of`},
		{`{"faults":[{"id":"x","kind":"error","gpu":4,"calls":["*"]}]}`, "gpu 4 is out of range (allowed: -1 for every GPU, or 0 to 3)"},
		{`{"faults":[{"id":"x","kind":"error","gpu":0,"calls":["GetPower"]}]}`, `\"GetPower\" is not an NVML device method`},
		{`{"faults":[{"id":"x","kind":"error","gpu":0,"calls":["*"],"code":"ERROR_X"}]}`, `code \"ERROR_X\" is not allowed`},
		{`{"faults":[{"id":"x","kind":"hang","gpu":0,"calls":["*"]}]}`, `duration \"\" is not allowed`},
		{`{"faults":[{"id":"x","kind":"set-limit","gpu":0,"limit_mw":1000}]}`, "limit_mw 1000 is outside the GPU's constraints (allowed: 200000 to 700000)"},
		{`{"faults":[{"kind":"reload"}]}`, "id is missing"},
	}
	for _, c := range bad {
		b.writeRaw(c.content)
		b.writeRaw(c.content) // the same content again is not logged again
		if got := b.log.Count(c.want); got != 1 {
			t.Errorf("%s: log has %q %d times, want once:\n%s", c.content, c.want, got, b.log)
		}
		if ret := power(b.f.GPU(0)); ret != nvml.ERROR_UNKNOWN {
			t.Errorf("after %s the fault in force is gone: %v", c.content, ret)
		}
	}
	if !strings.Contains(b.log.String(), b.path) {
		t.Errorf("the log does not name the file %s", b.path)
	}
	// A deleted file clears the faults.
	if err := os.Remove(b.path); err != nil {
		t.Fatal(err)
	}
	b.f.pollFaults(b.now)
	if ret := power(b.f.GPU(0)); ret != nvml.SUCCESS {
		t.Errorf("after the fault file went away: %v", ret)
	}
}

// TestFaultFilePolled checks the running fleet picks up a rewritten fault file by itself.
func TestFaultFilePolled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "faults.json")
	f := openFleet(t, Options{FaultFile: path})
	defer func() { _ = f.Shutdown() }()
	if ret := power(f.GPU(0)); ret != nvml.SUCCESS {
		t.Fatalf("before any fault: %v", ret)
	}
	data := `{"faults":[{"id":"f","kind":"error","gpu":0,"calls":["GetPowerUsage"]}]}`
	tmp := filepath.Join(dir, "tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the fault to be in force", func() bool { return power(f.GPU(0)) == nvml.ERROR_UNKNOWN })
}

// BenchmarkGetPowerUsageFaults measures what the fault check adds to a device call: none set,
// and a fault on another call in force.
func BenchmarkGetPowerUsageFaults(b *testing.B) {
	for _, c := range []struct {
		name   string
		faults string
	}{
		{"none", ""},
		{"other-call", `{"faults":[{"id":"f","kind":"error","gpu":-1,"calls":["GetTemperature"]}]}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			o := Options{Model: "H100", Count: 1, Trace: "steady"}
			if c.faults != "" {
				o.FaultFile = filepath.Join(b.TempDir(), "faults.json")
				o.manualFiles = true
				if err := os.WriteFile(o.FaultFile, []byte(c.faults), 0o600); err != nil {
					b.Fatal(err)
				}
			}
			f, err := New(o)
			if err != nil {
				b.Fatal(err)
			}
			_ = f.Init()
			g := f.GPU(0)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = g.GetPowerUsage()
			}
		})
	}
}

// A fault names NVML device methods, and a MIG device handle is an nvml.Device: its calls match
// by their own names, not by the GPU call they are answered through.
func TestFaultReachesMIGDeviceCalls(t *testing.T) {
	dir := t.TempDir()
	log, _ := testkit.NewLogger()
	b := &faultBench{t: t, path: filepath.Join(dir, "faults.json"), now: time.Now()}
	b.f = openFleet(t, Options{MIG: "3g.40gb,4g.40gb", FaultFile: b.path, StateFile: filepath.Join(dir, "devices.json"), Log: log, manualFiles: true})
	b.write(Fault{ID: "m1", Kind: FaultError, GPU: 0, Calls: []string{"GetMemoryInfo", "GetComputeRunningProcesses"}, Code: "ERROR_TIMEOUT"})
	for gpu, want := range []nvml.Return{nvml.ERROR_TIMEOUT, nvml.SUCCESS} {
		parent, _ := b.f.DeviceGetHandleByIndex(gpu)
		h, ret := parent.GetMigDeviceHandleByIndex(0)
		if ret != nvml.SUCCESS {
			t.Fatalf("GPU %d MIG device 0: %v", gpu, ret)
		}
		if _, ret := h.GetMemoryInfo(); ret != want {
			t.Errorf("GPU %d MIG device GetMemoryInfo = %v, want %v", gpu, ret, want)
		}
		if _, ret := h.GetComputeRunningProcesses(); ret != want {
			t.Errorf("GPU %d MIG device GetComputeRunningProcesses = %v, want %v", gpu, ret, want)
		}
		if _, ret := h.GetUUID(); ret != nvml.SUCCESS {
			t.Errorf("GPU %d MIG device GetUUID, a call the fault does not name = %v", gpu, ret)
		}
	}
}

// mig-layout reconfigures a running GPU's MIG layout and nvlink-errors adds errors to a link,
// each once per id, as an operator or a failing cable would while the agent runs; a layout the
// model cannot take, a link it does not have or an unknown counter is refused with the reason.
func TestFaultMIGLayoutAndNVLinkErrors(t *testing.T) {
	dir := t.TempDir()
	log, _ := testkit.NewLogger()
	b := &faultBench{t: t, path: filepath.Join(dir, "faults.json"), now: time.Now()}
	b.f = openFleet(t, Options{MIG: "7x1g.10gb", FaultFile: b.path, StateFile: filepath.Join(dir, "devices.json"), Log: log, manualFiles: true})
	b.write(Fault{ID: "mig", Kind: FaultMIGLayout, GPU: 1, Layout: "3g.40gb,4g.40gb"},
		Fault{ID: "crc", Kind: FaultNVLinkErrors, GPU: 0, Link: 5, Counter: "crc_data", Count: 3})
	b.f.pollFaults(b.now) // polled again: once per id
	count := func(gpu int) int {
		parent, _ := b.f.DeviceGetHandleByIndex(gpu)
		n := 0
		for i := range 7 {
			if _, ret := parent.GetMigDeviceHandleByIndex(i); ret == nvml.SUCCESS {
				n++
			}
		}
		return n
	}
	if n0, n1 := count(0), count(1); n0 != 7 || n1 != 2 {
		t.Errorf("MIG devices %d and %d after mig-layout on GPU 1, want 7 and 2", n0, n1)
	}
	for l, want := range map[int]uint64{5: 3, 4: 0} {
		if n, ret := b.f.GPU(0).GetNvLinkErrorCounter(l, nvml.NVLINK_ERROR_DL_CRC_DATA); ret != nvml.SUCCESS || n != want {
			t.Errorf("GPU 0 link %d CRC-data errors = %d (%v), want %d", l, n, ret, want)
		}
	}

	for _, tc := range []struct {
		fault Fault
		want  string
	}{
		{Fault{ID: "x", Kind: FaultMIGLayout, GPU: 0, Layout: "8x1g.10gb"}, "layout:"},
		{Fault{ID: "x", Kind: FaultNVLinkErrors, GPU: 0, Link: 18, Counter: "replay", Count: 1}, "link 18 is out of range (allowed: 0 to 17"},
		{Fault{ID: "x", Kind: FaultNVLinkErrors, GPU: 0, Link: 1, Counter: "crc", Count: 1}, `counter "crc" is not one of`},
		{Fault{ID: "x", Kind: FaultNVLinkErrors, GPU: 0, Link: 1, Counter: "replay"}, "count is missing"},
	} {
		data, _ := json.Marshal(FaultFile{Faults: []Fault{tc.fault}})
		if _, err := b.f.parseFaults(data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.fault, err, tc.want)
		}
	}
}

// SetMigMode takes effect at the GPU's next reset, which a reload fault is: until then
// GetMigMode reports the old mode with the new one pending; a GPU turned to MIG has no
// instances yet.
func TestSetMigModeAppliedAtReload(t *testing.T) {
	b := newFaultBench(t)
	g := b.f.GPU(1)
	if status, ret := g.SetMigMode(nvml.DEVICE_MIG_ENABLE); ret != nvml.SUCCESS || status != nvml.ERROR_IN_USE {
		t.Fatalf("SetMigMode = %v, activation %v; want SUCCESS, pending (ERROR_IN_USE)", ret, status)
	}
	if cur, pending, _ := g.GetMigMode(); cur != nvml.DEVICE_MIG_DISABLE || pending != nvml.DEVICE_MIG_ENABLE {
		t.Errorf("before the reset: mode %d pending %d, want 0 and 1", cur, pending)
	}
	b.write(Fault{ID: "r", Kind: FaultReload})
	if cur, pending, _ := g.GetMigMode(); cur != nvml.DEVICE_MIG_ENABLE || pending != nvml.DEVICE_MIG_ENABLE {
		t.Errorf("after the reset: mode %d pending %d, want 1 and 1", cur, pending)
	}
	if _, ret := g.GetMigDeviceHandleByIndex(0); ret != nvml.ERROR_NOT_FOUND {
		t.Errorf("a GPU just turned to MIG has a MIG device (%v)", ret)
	}
	if cur, _, _ := b.f.GPU(0).GetMigMode(); cur != nvml.DEVICE_MIG_DISABLE {
		t.Error("the reset turned MIG on for a GPU that asked nothing")
	}
}
