package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capstan-power/capstan/collectors/gpu/sim"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// The sim backend's device-state file plays the hardware: what the GPUs hold is read from it,
// not from the agent's word, and it outlives the agent as a GPU's limits do.

// simFiles are a test's device-state and fault files.
type simFiles struct{ devices, faults string }

func newSimFiles(t *testing.T) simFiles {
	dir := t.TempDir()
	return simFiles{devices: filepath.Join(dir, "devices.json"), faults: filepath.Join(dir, "faults.json")}
}

func (s simFiles) flags() []string {
	return []string{"--gpu.sim.state-file=" + s.devices, "--gpu.sim.fault-file=" + s.faults}
}

// read returns the device-state file, or nil while it is not there yet.
func (s simFiles) read(t *testing.T) *sim.StateFile {
	t.Helper()
	st, err := sim.ReadStateFile(s.devices)
	if err != nil {
		t.Fatalf("device-state file: %v", err)
	}
	return st
}

// inject replaces the fault file atomically, as a harness does.
func (s simFiles) inject(t *testing.T, faults ...sim.Fault) {
	t.Helper()
	data, err := json.Marshal(sim.FaultFile{Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	tmp := s.faults + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.faults); err != nil {
		t.Fatal(err)
	}
}

// waitDevices waits until the device-state file, written by process pid, satisfies cond, and
// returns it.
func (s simFiles) waitDevices(t *testing.T, pid int, what string, cond func(*sim.StateFile) bool) *sim.StateFile {
	t.Helper()
	var st *sim.StateFile
	if !testkit.Poll(agentWait, func() bool {
		st = s.read(t)
		return st != nil && st.PID == pid && cond(st)
	}) {
		t.Fatalf("the device-state file never showed %s; last: %+v", what, st)
	}
	return st
}

// writtenAfter waits for a device-state file that process pid began to write after now: the
// second one written after it, since the first may have read the GPUs before now.
func (s simFiles) writtenAfter(t *testing.T, pid int, now time.Time) *sim.StateFile {
	t.Helper()
	first := s.waitDevices(t, pid, "a write after "+now.String(), func(st *sim.StateFile) bool { return st.WrittenAt.After(now) })
	return s.waitDevices(t, pid, "a second write", func(st *sim.StateFile) bool { return st.Seq > first.Seq })
}

func sumLimitsMW(st *sim.StateFile) (sum uint64) {
	for _, g := range st.GPUs {
		sum += uint64(g.LimitMW)
	}
	return sum
}

// A SIGKILLed agent leaves the limits it wrote on the GPUs; its successor finds them there and
// restores the originals or adopts them, as capping.after-crash says.
func TestSimDevicesKeepLimitsAcrossSIGKILL(t *testing.T) {
	for _, mode := range []string{"restore", "adopt"} {
		t.Run(mode, func(t *testing.T) {
			files := newSimFiles(t)
			addr := otlptest.FreeAddr(t)
			state := filepath.Join(t.TempDir(), "state.json")
			flags := append(cappingFlags(addr, state), files.flags()...)
			flags = append(flags, "--capping.after-crash="+mode)

			a := startAgent(t, flags...)
			waitCapped(t, a, addr)
			files.waitDevices(t, a.cmd.Process.Pid, "the GPUs capped to 1600 W", func(st *sim.StateFile) bool {
				return len(st.GPUs) == 4 && sumLimitsMW(st) <= 1600_000*105/100
			})
			if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-a.done
			_ = a.cmd.Wait()
			left := files.read(t)
			for _, g := range left.GPUs {
				if g.LimitMW >= g.DefaultMW || g.LimitMW < g.MinMW || g.LimitWriter != sim.WriterNVML {
					t.Errorf("after SIGKILL GPU %d holds %d mW set by %q, want a capped limit the agent wrote", g.Index, g.LimitMW, g.LimitWriter)
				}
			}

			// The successor's first control period hangs reading power, so the device file
			// shows what its start did with the limits, before any control.
			files.inject(t, sim.Fault{ID: "freeze", Kind: sim.FaultHang, GPU: -1, Calls: []string{"GetFieldValues"}, Duration: "1h"})
			b := startAgent(t, flags...)
			b.waitLog(t, "capping active")
			got := files.writtenAfter(t, b.cmd.Process.Pid, time.Now())
			for i, g := range got.GPUs {
				was := left.GPUs[i]
				switch mode {
				case "restore":
					if g.LimitMW != g.DefaultMW || g.LimitWriter != sim.WriterNVML || !g.LimitSetAt.After(left.WrittenAt) {
						t.Errorf("GPU %d after a restart that restores: %d mW by %q at %v, want the original %d written now",
							i, g.LimitMW, g.LimitWriter, g.LimitSetAt, g.DefaultMW)
					}
				case "adopt":
					if g.LimitMW != was.LimitMW || !g.LimitSetAt.Equal(was.LimitSetAt) {
						t.Errorf("GPU %d after a restart that adopts: %d mW set at %v, want the dead agent's %d mW set at %v",
							i, g.LimitMW, g.LimitSetAt, was.LimitMW, was.LimitSetAt)
					}
				}
			}
			want := map[string]string{"restore": "restoring the original limits", "adopt": "adopting the limits in force"}[mode]
			if !strings.Contains(b.Logs(), want) {
				t.Errorf("the successor did not log %q; logs:\n%s", want, b.Logs())
			}
		})
	}
}

// The agent lives through NVML faults: each is logged once, shows on /metrics, and the limits
// are restored on the devices when it stops.
func TestAgentSurvivesSimFaults(t *testing.T) {
	files := newSimFiles(t)
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgent(t, append(cappingFlags(addr, state), files.flags()...)...)
	pid := a.cmd.Process.Pid
	waitCapped(t, a, addr)
	metric := func(name string, labels ...string) float64 {
		t.Helper()
		total := 0.0
		for _, m := range scrape(t, "http://"+addr+"/metrics")[name].GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				match = match && have[labels[i]] == labels[i+1]
			}
			if match {
				total += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		return total
	}
	// settle lets the agent run on with a fault for a while (a couple of seconds of periods and
	// collections) before counting its log lines.
	settle := func() {
		t.Helper()
		st := files.read(t)
		files.waitDevices(t, pid, "20 more writes", func(s *sim.StateFile) bool { return s.Seq >= st.Seq+20 })
		if exited(pid) {
			t.Fatalf("the agent died; logs:\n%s", a.Logs())
		}
	}
	times := func(line string, want int) {
		t.Helper()
		if n := strings.Count(a.Logs(), line); n != want {
			t.Errorf("the agent logged %q %d times, want %d; logs:\n%s", line, n, want, a.Logs())
		}
	}
	once := func(line string) { t.Helper(); times(line, 1) }

	// A limit changed out of band while writes are refused: the agent sees the change and its
	// re-application refused.
	files.inject(t,
		sim.Fault{ID: "oob", Kind: sim.FaultSetLimit, GPU: 1, LimitMW: 650_000},
		sim.Fault{ID: "refuse", Kind: sim.FaultRefuseWrites, GPU: -1})
	if !testkit.Poll(agentWait, func() bool {
		return metric("capstan_capping_actuations_total", "capstan_capping_result", "refused") > 0 &&
			metric("capstan_capping_overrides_total") > 0
	}) {
		t.Fatalf("no refused write or override on /metrics; logs:\n%s", a.Logs())
	}
	settle()
	// Once per GPU: each GPU's refusal is its own news.
	for i := range 4 {
		times(fmt.Sprintf(`msg="capping: GPU refused a power limit; leaving its limit as it was" gpu=%d `, i), 1)
	}
	once(`msg="sim: fault injected" id=oob`)

	// Power readings fail on every GPU: the loop falls back to failsafe caps.
	files.inject(t, sim.Fault{ID: "nopower", Kind: sim.FaultError, GPU: -1, Calls: []string{"GetFieldValues"}, Code: "ERROR_UNKNOWN"})
	if !testkit.Poll(agentWait, func() bool { return metric("capstan_capping_mode", "capstan_capping_mode", "failsafe") == 1 }) {
		t.Fatalf("capping never went to failsafe without power readings; logs:\n%s", a.Logs())
	}
	settle()
	once("capping: power readings lost")

	// A GPU falls off the bus.
	files.inject(t, sim.Fault{ID: "lost", Kind: sim.FaultLost, GPU: 2})
	if !testkit.Poll(agentWait, func() bool {
		return metric("hw_status", "gpu_index", "2", "hw_state", "failed") == 1 &&
			metric("capstan_gpu_present") == 3 && metric("capstan_gpu_expected") == 4
	}) {
		t.Fatalf("GPU 2 never reported failed; logs:\n%s", a.Logs())
	}
	settle()
	once("GPU fell off the bus")
	if st := files.read(t); st.GPUs[2].Present {
		t.Error("the device-state file shows the lost GPU present")
	}

	// Every fault ends (GPU 2 comes back at its default limit); SIGTERM restores the rest.
	files.inject(t)
	files.waitDevices(t, pid, "GPU 2 back", func(s *sim.StateFile) bool { return s.GPUs[2].Present })
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM; logs:\n%s", code, a.Logs())
	}
	for _, g := range files.read(t).GPUs {
		if g.LimitMW != g.DefaultMW {
			t.Errorf("after the stop GPU %d holds %d mW, want its original %d; logs:\n%s", g.Index, g.LimitMW, g.DefaultMW, a.Logs())
		}
	}
}
