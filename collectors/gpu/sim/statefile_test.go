package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/testkit"
)

// openFleet builds and initialises a fleet with device files.
func openFleet(t *testing.T, o Options) *Fleet {
	t.Helper()
	if o.Model == "" {
		o.Model, o.Count, o.Trace, o.Seed = "H100", 4, "steady", 7
	}
	if o.Clock == nil {
		o.Clock = clock.NewManual(epoch)
	}
	f, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mustOK(t, "Init", f.Init())
	return f
}

func readState(t *testing.T, path string) *StateFile {
	t.Helper()
	s, err := ReadStateFile(path)
	if err != nil || s == nil {
		t.Fatalf("ReadStateFile(%s) = %v, %v", path, s, err)
	}
	return s
}

func TestStateFileLimitsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	f := openFleet(t, Options{StateFile: path})
	mustOK(t, "SetPowerManagementLimit", f.GPU(1).SetPowerManagementLimit(450_000))
	mustOK(t, "SetPowerManagementLimit", f.GPU(3).SetPowerManagementLimit(200_000))
	mustOK(t, "Shutdown", f.Shutdown())

	s := readState(t, path)
	if s.PID != os.Getpid() || s.Seq == 0 || len(s.GPUs) != 4 || s.WrittenAt.IsZero() {
		t.Fatalf("state file = pid %d seq %d, %d GPUs, written %v; want this process, seq > 0, 4 GPUs, a time",
			s.PID, s.Seq, len(s.GPUs), s.WrittenAt)
	}
	g1 := s.GPUs[1]
	if g1.LimitMW != 450_000 || g1.EnforcedMW != 450_000 || g1.LimitWriter != WriterNVML || g1.LimitSetAt.IsZero() ||
		!g1.Present || g1.Model != "H100" || g1.MinMW != 200_000 || g1.MaxMW != 700_000 || g1.DefaultMW != 700_000 ||
		g1.UUID != f.GPU(1).uuid || g1.Index != 1 || g1.PowerMW == 0 {
		t.Errorf("GPU 1 in the state file = %+v", g1)
	}
	if g0 := s.GPUs[0]; g0.LimitMW != 700_000 || g0.LimitWriter != "" {
		t.Errorf("untouched GPU 0 = limit %d by %q, want the default 700000 by nobody", g0.LimitMW, g0.LimitWriter)
	}

	// A new fleet, as a restarted agent opens it, finds the limits the last one left.
	again := openFleet(t, Options{StateFile: path})
	for i, want := range []uint32{700_000, 450_000, 700_000, 200_000} {
		if got, ret := again.GPU(i).GetPowerManagementLimit(); ret != nvml.SUCCESS || got != want {
			t.Errorf("after reopening, GPU %d limit = %d (%v), want %d", i, got, ret, want)
		}
		if got, _ := again.GPU(i).GetEnforcedPowerLimit(); got != want {
			t.Errorf("after reopening, GPU %d enforced limit = %d, want %d", i, got, want)
		}
	}
	mustOK(t, "Shutdown", again.Shutdown())
	if s2 := readState(t, path); s2.GPUs[1].LimitWriter != WriterNVML || !s2.GPUs[1].LimitSetAt.Equal(g1.LimitSetAt) {
		t.Errorf("after reopening, GPU 1 = %q at %v, want who set it and when kept (%q at %v)",
			s2.GPUs[1].LimitWriter, s2.GPUs[1].LimitSetAt, g1.LimitWriter, g1.LimitSetAt)
	}
	// Another seed is other hardware: nothing is taken over.
	other := openFleet(t, Options{Model: "H100", Count: 4, Trace: "steady", Seed: 8, StateFile: path})
	if got, _ := other.GPU(1).GetPowerManagementLimit(); got != 700_000 {
		t.Errorf("other GPUs took over a limit: %d", got)
	}
	mustOK(t, "Shutdown", other.Shutdown())
}

// TestStateFileWrittenWhileRunning checks that the file follows a limit change without a
// Shutdown, as a SIGKILLed agent leaves it.
func TestStateFileWrittenWhileRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	f := openFleet(t, Options{StateFile: path})
	defer func() { _ = f.Shutdown() }()
	mustOK(t, "SetPowerManagementLimit", f.GPU(2).SetPowerManagementLimit(300_000))
	var seq uint64
	testkit.WaitFor(t, "the state file to show the new limit", func() bool {
		s, err := ReadStateFile(path)
		if err != nil || s == nil {
			return false
		}
		seq = s.Seq
		return s.GPUs[2].LimitMW == 300_000
	})
	testkit.WaitFor(t, "the state file to be rewritten with no change", func() bool {
		s, err := ReadStateFile(path)
		return err == nil && s != nil && s.Seq > seq
	})
}

func TestStateFileRefusesBadContent(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, content, want string }{
		{"not JSON", "{", "does not parse"},
		{"unknown key", `{"version":1,"gpus":[],"extra":1}`, "unknown field"},
		{"version", `{"version":2,"gpus":[]}`, "version 2 is not supported"},
		{"duplicate", `{"version":1,"gpus":[{"uuid":"GPU-a"},{"uuid":"GPU-a"}]}`, "appears twice"},
		{"no uuid", `{"version":1,"gpus":[{"limit_mw":1}]}`, "has no uuid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".json")
			if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := New(Options{Model: "H100", Count: 2, Trace: "steady", StateFile: path})
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New with %s = %v, want an error naming %s and saying %q", c.content, err, path, c.want)
			}
		})
	}

	// A limit outside the GPU's constraints is never applied.
	path := filepath.Join(dir, "devices.json")
	f := openFleet(t, Options{StateFile: path})
	uuid := f.GPU(0).uuid
	mustOK(t, "Shutdown", f.Shutdown())
	data, _ := os.ReadFile(path)
	bad := strings.Replace(string(data), `"limit_mw":700000`, `"limit_mw":1`, 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Model: "H100", Count: 4, Trace: "steady", Seed: 7, StateFile: path})
	if err == nil || !strings.Contains(err.Error(), "("+uuid+"): limit_mw 1 is outside its constraints (allowed: 200000 to 700000)") {
		t.Errorf("New with limit_mw 1 = %v", err)
	}

	// A missing file is a first start.
	if _, err := New(Options{Model: "H100", Count: 2, Trace: "steady", StateFile: filepath.Join(dir, "none.json")}); err != nil {
		t.Errorf("New with no state file yet = %v", err)
	}
}

// TestStateFileLostGPUReturnsAtDefault checks that a GPU lost when the last agent died comes
// back, as after a driver reload, at its default limit.
func TestStateFileLostGPUReturnsAtDefault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	f := openFleet(t, Options{StateFile: path})
	mustOK(t, "SetPowerManagementLimit", f.GPU(1).SetPowerManagementLimit(300_000))
	f.SetLost(1, true)
	mustOK(t, "Shutdown", f.Shutdown())
	if s := readState(t, path); s.GPUs[1].Present || s.GPUs[1].LimitMW != 300_000 {
		t.Fatalf("lost GPU in the state file = %+v, want present false, limit 300000", s.GPUs[1])
	}
	again := openFleet(t, Options{StateFile: path})
	if got, ret := again.GPU(1).GetPowerManagementLimit(); ret != nvml.SUCCESS || got != 700_000 {
		t.Errorf("GPU lost at the last stop: limit = %d (%v), want back at the default 700000", got, ret)
	}
	mustOK(t, "Shutdown", again.Shutdown())
	if s := readState(t, path); s.GPUs[1].LimitWriter != WriterReload || !s.GPUs[1].Present {
		t.Errorf("GPU back from the bus = %+v, want present, set by a reload", s.GPUs[1])
	}
}
