package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// cappingFlags run the agent capping four simulated GPUs (4 × 700 W) under 1600 W.
func cappingFlags(addr, state string) []string {
	return []string{"--gpu.backend=sim", "--gpu.sim.count=4", "--gpu.sim.trace=steady",
		"--web.listen-address=" + addr, "--capping.enabled", "--budget.watts=1600",
		"--capping.period=100ms", "--capping.state-file=" + state}
}

// requestedLimits returns capstan.gpu.power.limit{kind=requested} per GPU from /metrics.
func requestedLimits(t *testing.T, addr string) []float64 {
	t.Helper()
	var out []float64
	f, ok := scrape(t, "http://"+addr+"/metrics")["capstan_gpu_power_limit_watts"]
	if !ok {
		return nil
	}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "capstan_limit_kind" && l.GetValue() == "requested" {
				out = append(out, m.GetGauge().GetValue())
			}
		}
	}
	return out
}

// waitCapped waits until /metrics shows the four GPUs' requested limits summing to the budget.
func waitCapped(t *testing.T, a *agentProcess, addr string) []float64 {
	t.Helper()
	a.waitLog(t, "agent ready")
	var l []float64
	if !testkit.Poll(agentWait, func() bool {
		l = requestedLimits(t, addr)
		total := 0.0
		for _, v := range l {
			total += v
		}
		return len(l) == 4 && total <= 1600*1.05
	}) {
		t.Fatalf("limits never capped to 1600 W: %v; logs:\n%s", l, a.Logs())
	}
	return l
}

type stateFile struct {
	Clean bool `json:"clean"`
	GPUs  []struct {
		UUID               string `json:"uuid"`
		OriginalMilliwatts uint32 `json:"original_milliwatts"`
	} `json:"gpus"`
}

func readState(t *testing.T, path string) stateFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the state file: %v", err)
	}
	var s stateFile
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("state file %s: %v", data, err)
	}
	return s
}

// Capping on: the limits move under the budget with the originals saved first; SIGTERM puts
// the originals back and removes the state file.
func TestCappingRestoresOnSIGTERM(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgent(t, cappingFlags(addr, state)...)
	a.waitLog(t, "capping active")
	capped := waitCapped(t, a, addr)
	st := readState(t, state)
	if st.Clean || len(st.GPUs) != 4 {
		t.Fatalf("state file while capping: %+v, want 4 GPUs, not clean", st)
	}
	for _, g := range st.GPUs {
		if g.OriginalMilliwatts != 700_000 {
			t.Errorf("state file saved %d mW for %s, want the original 700000", g.OriginalMilliwatts, g.UUID)
		}
	}
	fams := scrape(t, "http://"+addr+"/metrics")
	for _, name := range []string{"capstan_capping_budget_watts", "capstan_capping_measured_watts", "capstan_capping_cap_total_watts", "capstan_capping_gpu_limit_watts", "capstan_capping_mode", "capstan_capping_actuations_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if code := a.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM; logs:\n%s", code, a.Logs())
	}
	if !strings.Contains(a.Logs(), "original GPU limits restored") {
		t.Errorf("SIGTERM did not restore the limits (capped at %v); logs:\n%s", capped, a.Logs())
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state file left after a clean restore: %v", err)
	}
}

// SIGKILL leaves the state file; the next start finds it and restores the original limits
// before capping again.
func TestCappingRecoversAfterSIGKILL(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgent(t, cappingFlags(addr, state)...)
	waitCapped(t, a, addr)
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	_ = a.cmd.Wait()
	if st := readState(t, state); st.Clean || len(st.GPUs) != 4 || st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Fatalf("state file after SIGKILL: %+v", st)
	}

	b := startAgent(t, cappingFlags(addr, state)...)
	b.waitLog(t, "capping active")
	logs := b.Logs()
	restoreAt := strings.Index(logs, "restoring the original limits")
	if restoreAt < 0 || restoreAt > strings.Index(logs, "capping active") {
		t.Errorf("the next start did not restore from the state file before capping; logs:\n%s", logs)
	}
	waitCapped(t, b, addr)
	if code := b.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// A SIGHUP reload holds the limits: no restore, and the new controller resumes from the state
// file with the true originals.
func TestCappingReloadHoldsLimits(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	cfg := filepath.Join(dir, "capstan.yaml")
	if err := os.WriteFile(cfg, []byte("capping:\n  enabled: true\n  period: 100ms\n  state-file: "+state+"\nbudget:\n  watts: 1600\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--config.file", cfg, "--gpu.backend=sim", "--gpu.sim.count=4", "--gpu.sim.trace=steady", "--web.listen-address="+addr)
	waitCapped(t, a, addr)
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "configuration reloaded")
	a.waitLog(t, "resuming with the original limits from the state file")
	if strings.Contains(a.Logs(), "original GPU limits restored") {
		t.Errorf("a reload restored the limits; logs:\n%s", a.Logs())
	}
	if st := readState(t, state); st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Errorf("after a reload the state file holds %d mW, want the original 700000", st.GPUs[0].OriginalMilliwatts)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
	if !strings.Contains(a.Logs(), "original GPU limits restored") {
		t.Errorf("SIGTERM after a reload did not restore; logs:\n%s", a.Logs())
	}
}

// Reloads that would lose limits or stop the agent: a moved state file is refused, a budget
// file gone bad is reported and steered around (the agent keeps running), and turning capping
// off applies capping.on-exit instead of leaving the limits held by nobody.
func TestCappingReloadEdgeCases(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state.json")
	budgetFile := filepath.Join(dir, "budget.yaml")
	cfg := filepath.Join(dir, "capstan.yaml")
	writeFile := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config := func(enabled bool, stateFile string) string {
		return fmt.Sprintf("capping:\n  enabled: %v\n  period: 100ms\n  state-file: %s\nbudget:\n  source: file\n  file: %s\n", enabled, stateFile, budgetFile)
	}
	writeFile(budgetFile, "watts: 1600\n")
	writeFile(cfg, config(true, state))
	a := startAgent(t, "--config.file", cfg, "--gpu.backend=sim", "--gpu.sim.count=4", "--gpu.sim.trace=steady", "--web.listen-address="+addr)
	waitCapped(t, a, addr)

	writeFile(cfg, config(true, filepath.Join(dir, "elsewhere.json")))
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "cannot change to")
	if strings.Contains(a.Logs(), "configuration reloaded") {
		t.Fatalf("a reload moving the state file was taken; logs:\n%s", a.Logs())
	}

	writeFile(cfg, config(true, state))
	writeFile(budgetFile, "watts: [\n")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "configuration reloaded")
	a.waitLog(t, "budget file rejected; no budget yet")
	a.waitLog(t, "using the fallback budget")
	if st := readState(t, state); st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Errorf("state file holds %d mW after the reloads, want the original 700000", st.GPUs[0].OriginalMilliwatts)
	}

	writeFile(cfg, config(false, state))
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLogCount(t, "configuration reloaded", 2)
	a.waitLog(t, "original GPU limits restored")
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state file still there after capping was turned off with on-exit restore: %v", err)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d; logs:\n%s", code, a.Logs())
	}
}

// capstan simulate --json prints exactly the keys the report promises, with figures that
// follow from the run: a step down settles, and by-demand capping beats static caps on an
// imbalanced fleet.
func TestSimulateJSON(t *testing.T) {
	out, errOut, code := runCapstan(t, "simulate", "--gpu.sim.trace=imbalanced", "--gpu.sim.count=8",
		"--budget.watts=3360", "--duration=10m", "--budget.step=5m:2352", "--json",
		"--csv", filepath.Join(t.TempDir(), "run.csv"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got map[string]float64
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not one JSON object of numbers: %v\n%s", err, out)
	}
	want := []string{"settle_periods", "max_overshoot_pct", "time_over_budget_pct", "throughput_vs_static_pct", "throughput_vs_oracle_pct", "energy_j", "max_rise_wps", "rise_limit_cost_pct"}
	if len(got) != len(want) {
		t.Errorf("keys %v, want exactly %v", got, want)
	}
	for _, k := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("no key %s in %s", k, out)
		}
	}
	if s := got["settle_periods"]; s < 0 || s > 3 {
		t.Errorf("settle_periods %v, want 0..3", s)
	}
	if got["throughput_vs_static_pct"] <= 100 || got["throughput_vs_oracle_pct"] < 97 {
		t.Errorf("throughput vs static %v %%, vs oracle %v %%", got["throughput_vs_static_pct"], got["throughput_vs_oracle_pct"])
	}
	if got["energy_j"] <= 0 {
		t.Errorf("energy %v J", got["energy_j"])
	}
}

func TestSimulateWritesPlotAndCSV(t *testing.T) {
	dir := t.TempDir()
	png, csvFile := filepath.Join(dir, "run.png"), filepath.Join(dir, "run.csv")
	out, errOut, code := runCapstan(t, "simulate", "--gpu.sim.count=4", "--budget.watts=1800", "--duration=2m", "--plot", png, "--csv", csvFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"capstan", "static B/n", "oracle", "throughput vs oracle"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	data, err := os.ReadFile(png)
	if err != nil || len(data) < 8 || string(data[1:4]) != "PNG" {
		t.Errorf("--plot did not write a PNG: %v", err)
	}
	rows, err := os.ReadFile(csvFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(rows)), "\n")
	if len(lines) != 121 || !strings.HasPrefix(lines[0], "time_s,budget_w,measured_w") || !strings.HasSuffix(lines[0], "limit_gpu3_w") {
		t.Errorf("CSV has %d lines (want a header and 120 periods), header %q", len(lines), lines[0])
	}
}

func TestSimulateRejectsBadStep(t *testing.T) {
	for _, step := range []string{"30m", "soon:100", "2h:100", "1m:-5"} {
		_, errOut, code := runCapstan(t, "simulate", "--budget.watts=1000", "--duration=1h", "--budget.step="+step)
		if code != 2 || !strings.Contains(errOut, "--budget.step") {
			t.Errorf("--budget.step=%s: exit %d, stderr %q; want 2 naming the flag", step, code, errOut)
		}
	}
	if _, errOut, code := runCapstan(t, "simulate", "--duration=1m"); code != 2 || !strings.Contains(errOut, "--budget.watts") {
		t.Errorf("without a budget: exit %d, %q", code, errOut)
	}
}
