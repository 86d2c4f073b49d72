package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/capstan-power/capstan/collectors"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// binary is the capstan binary built once for the end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	testkit.MainWithBinary(m, ".", "capstan", &binary, "../capstan-simulate")
}

// simFlags run the agent on the simulated fleet, with nothing listening unless a test asks.
var simFlags = []string{"--gpu.backend=sim", "--gpu.sim.count=2", "--web.listen-address="}

// everyGPUMetricFlags make the simulated fleet export every GPU metric of the table: GPU 1 in
// MIG mode, and the GPU metrics that are off by default (per NVLink link) selected.
func everyGPUMetricFlags() []string {
	flags := []string{"--gpu.sim.mig=off;3g.40gb,2x2g.20gb"}
	for _, d := range metrics.Table {
		if d.From("gpu") && !d.OnByDefault() {
			flags = append(flags, "--metrics="+d.Name+"=true")
		}
	}
	return flags
}

func runCapstan(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code = 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running capstan %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

type jsonPoint struct {
	Name       string            `json:"name"`
	Unit       string            `json:"unit"`
	Type       string            `json:"type"`
	Value      float64           `json:"value"`
	Attributes map[string]string `json:"attributes"`
	Resource   map[string]string `json:"resource"`
}

// gpuMetricsNotOnSXM are table metrics the simulated SXM boards answer "not supported" for, as
// real SXM boards do: they have no fan of their own, and (Ampere and later) remap rows instead
// of retiring pages; and those the tests' simulated H100s answer "not supported" for, as real
// Hopper boards do (firmware power smoothing is Blackwell's).
var gpuMetricsNotOnSXM = map[string]bool{metrics.GPUFanSpeed.Name: true,
	metrics.GPURetiredPages.Name: true, metrics.GPURetirementPending.Name: true,
	metrics.GPUPowerSmoothing.Name: true, metrics.GPUPowerSmoothingFloor.Name: true}

func TestCollectJSONHasEveryGPUMetric(t *testing.T) {
	// The host collectors read a fixture server's sysfs: this VM has no cpufreq, hwmon, thermal
	// zones or powercap, and every collector must be up here.
	out, errOut, code := runCapstan(t, append(append([]string{"collect", "--json", "--node.name=node-a",
		"--path.sysfs=" + hostfixtures.Sysfs(hostfixtures.Intel)}, simFlags...), everyGPUMetricFlags()...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var points []jsonPoint
	if err := json.Unmarshal([]byte(out), &points); err != nil {
		t.Fatalf("output is not the JSON array documented: %v\n%s", err, out)
	}
	seen := map[string]bool{}
	for _, p := range points {
		seen[p.Name] = true
		d := metrics.ByName(p.Name)
		if d == nil {
			t.Errorf("%s is not in the metric table", p.Name)
			continue
		}
		if p.Unit != d.Unit || p.Type != d.Kind.String() {
			t.Errorf("%s: unit %q type %q, table says %q %q", p.Name, p.Unit, p.Type, d.Unit, d.Kind)
		}
		for k := range p.Attributes {
			if !contains(d.Attributes, k) {
				t.Errorf("%s carries attribute %q the table does not list", p.Name, k)
			}
		}
		if p.Resource["service.name"] != "capstan" || p.Resource["host.name"] != "node-a" {
			t.Errorf("%s: resource %v lacks service.name=capstan host.name=node-a", p.Name, p.Resource)
		}
	}
	for _, d := range metrics.Table {
		if (d.From("gpu") || d.From("agent")) && !seen[d.Name] && !gpuMetricsNotOnSXM[d.Name] {
			t.Errorf("%s missing from capstan collect", d.Name)
		}
	}
	// Power of an H100 (200–700 W limits) must sit inside the model's range.
	for _, p := range points {
		if p.Name == metrics.HWPower.Name && (p.Value < 50 || p.Value > 700) {
			t.Errorf("hw.power %v W is outside an H100's range", p.Value)
		}
		if p.Name == metrics.CollectorUp.Name && p.Value != 1 {
			t.Errorf("collector %s is down", p.Attributes["collector"])
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestCollectTable(t *testing.T) {
	out, errOut, code := runCapstan(t, append([]string{"collect"}, simFlags...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, "METRIC") || !strings.Contains(out, "hw.power") || !strings.Contains(out, "gpu.index=1") {
		t.Errorf("table output lacks its header or GPU rows:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runCapstan(t, "version")
	if code != 0 || !strings.HasPrefix(out, "capstan ") {
		t.Errorf("capstan version: exit %d, output %q", code, out)
	}
}

func TestConfigErrorsExitTwoWithoutStackTrace(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "capstan.yaml")
	if err := os.WriteFile(bad, []byte("gpu:\n  backend: cuda\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"bad value in file", []string{"--config.file", bad}, "capstan.yaml:2"},
		{"config check", []string{"config", "check", bad}, `"cuda"`},
		{"bad flag value", []string{"--gpu.sim.count=0"}, "gpu.sim.count"},
		{"unknown flag", []string{"--gpu.bakend=sim"}, "gpu.bakend"},
		{"missing file", []string{"--config.file", filepath.Join(dir, "nope.yaml")}, "nope.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := runCapstan(t, tc.args...)
			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr: %s", code, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not name %q", errOut, tc.want)
			}
			if strings.Contains(errOut, "goroutine ") || strings.Contains(errOut, "panic") {
				t.Errorf("stack trace on a config error:\n%s", errOut)
			}
		})
	}
}

func TestConfigCheckPrintsEffectiveConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "capstan.yaml")
	if err := os.WriteFile(path, []byte("gpu:\n  backend: sim\n  sim:\n    count: 4\notlp:\n  headers:\n    api-key: s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCapstan(t, "config", "check", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"backend: sim", "count: 4", "listen-address: 127.0.0.1:9400", "api-key: <redacted>"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Error("config check printed a header secret")
	}
}

// agentProcess is a running agent with its stderr (logs) captured line by line.
type agentProcess struct {
	cmd  *exec.Cmd
	logs testkit.LogBuffer
	out  testkit.LogBuffer
	done chan struct{}
}

func startAgent(t *testing.T, args ...string) *agentProcess {
	t.Helper()
	return startAgentEnv(t, nil, args...)
}

// startAgentEnv starts the agent with env added to this process's environment.
func startAgentEnv(t *testing.T, env []string, args ...string) *agentProcess {
	t.Helper()
	a := &agentProcess{cmd: exec.Command(binary, args...), done: make(chan struct{})}
	if env != nil {
		a.cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stdout = &a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20) // a panic's stack has long lines
		for sc.Scan() {
			_, _ = a.logs.Write(append(sc.Bytes(), '\n'))
		}
	}()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
	})
	return a
}

func (a *agentProcess) Logs() string { return a.logs.String() }

// agentWait bounds a wait on the agent binary: generous, it only keeps a broken build from
// hanging the suite.
const agentWait = 60 * time.Second

// waitLog waits until the logs contain s.
func (a *agentProcess) waitLog(t *testing.T, s string) { t.Helper(); a.waitLogCount(t, s, 1) }

// waitLogCount waits until the logs contain s at least n times.
func (a *agentProcess) waitLogCount(t *testing.T, s string, n int) {
	t.Helper()
	if !testkit.Poll(agentWait, func() bool { return a.logs.Count(s) >= n }) {
		t.Fatalf("agent never logged %q %d times; logs:\n%s", s, n, a.Logs())
	}
}

// waitOutput waits until the agent's stdout contains s.
func (a *agentProcess) waitOutput(t *testing.T, s string) {
	t.Helper()
	if !testkit.Poll(agentWait, func() bool { return a.out.Contains(s) }) {
		t.Fatalf("agent never printed %q; stdout:\n%s", s, a.out.String())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (a *agentProcess) stop(t *testing.T) int {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-a.done
	var ee *exec.ExitError
	if err := a.cmd.Wait(); errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestAgentServesPrometheusAndStopsCleanly(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=2", "--web.listen-address="+addr, "--summary.interval=1s")
	a.waitLog(t, "agent ready")
	if code, _ := get(t, "http://"+addr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d after ready, want 200", code)
	}
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	families := scrape(t, "http://"+addr+"/metrics")
	for _, name := range []string{"hw_power_watts", "capstan_collector_up"} {
		if _, ok := families[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	// The summary table a person watching `make run` sees.
	a.waitOutput(t, "POWER W")
	if code := a.stop(t); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; logs:\n%s", code, a.Logs())
	}
}

func TestSIGHUPReloadsAndKeepsRunningOnABadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "capstan.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	addr := otlptest.FreeAddr(t)
	write("gpu:\n  backend: sim\n  sim:\n    count: 1\nweb:\n  listen-address: " + addr + "\n")
	a := startAgent(t, "--config.file", path)
	a.waitLog(t, "agent ready")

	write("gpu:\n  backend: sim\n  sim:\n    count: [\n")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "configuration not reloaded")
	if code, _ := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Fatal("agent stopped serving after a bad reload")
	}

	write("gpu:\n  backend: sim\n  sim:\n    count: 3\nweb:\n  listen-address: " + addr + "\n")
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "configuration reloaded")
	a.waitLogCount(t, "agent ready", 2)
	testkit.Eventually(t, agentWait, "3 hw_power_watts series on /metrics after the reload to 3 GPUs", func() bool {
		f, ok := scrape(t, "http://"+addr+"/metrics")["hw_power_watts"]
		return ok && len(f.GetMetric()) == 3
	})
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// Scrapes during a storm of reloads are all answered: the web socket stays open from one
// configuration to the next, a scrape between two waits for the next web server, and the old
// one answers what it accepted. Two scrapers: one keeping its connection alive, as Prometheus
// does, and one with a connection per scrape, as curl does.
func TestScrapesAnsweredThroughReloads(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=2", "--web.listen-address="+addr)
	a.waitLog(t, "agent ready")
	stop := make(chan struct{})
	failures := make(chan error, 1000)
	var scrapes atomic.Int64
	var scrapers sync.WaitGroup
	for _, client := range []*http.Client{
		{Timeout: 10 * time.Second},
		{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	} {
		scrapers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + addr + "/metrics")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				scrapes.Add(1)
				if err != nil {
					select {
					case failures <- err:
					default:
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	for i := range 5 {
		if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		a.waitLogCount(t, "configuration reloaded", i+1)
		time.Sleep(100 * time.Millisecond)
	}
	a.waitLogCount(t, "agent ready", 6)
	close(stop)
	scrapers.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("a scrape during reloads failed: %v", err)
	}
	if n := scrapes.Load(); n < 10 {
		t.Errorf("only %d scrapes during 5 reloads", n)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// scrape fetches a Prometheus endpoint and parses it with Prometheus' own parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d", url, code)
	}
	return testkit.ParseExposition(t, body)
}

// Without an NVIDIA driver, auto runs without GPU collection and says so in one line; it never
// falls back to the simulator.
func TestAutoWithoutNVMLRunsWithoutGPUs(t *testing.T) {
	if _, err := os.Stat("/dev/nvidia0"); err == nil {
		t.Skip("this host has an NVIDIA GPU; the test is about hosts without one")
	}
	out, errOut, code := runCapstan(t, "collect", "--json", "--gpu.backend=auto", "--web.listen-address=")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := strings.Count(errOut, "NVML not available"); n != 1 {
		t.Errorf("NVML absence logged %d times, want once:\n%s", n, errOut)
	}
	var points []jsonPoint
	if err := json.Unmarshal([]byte(out), &points); err != nil {
		t.Fatal(err)
	}
	for _, p := range points {
		if p.Name == metrics.HWPower.Name {
			t.Fatal("auto produced GPU data without NVML: it must never fall back to the simulator")
		}
		if p.Name == metrics.CollectorUp.Name && p.Attributes["collector"] == "gpu" && p.Value != 0 {
			t.Error("gpu collector reported up without NVML")
		}
	}
}

// A plain collect on a host without NVML says, in the table's output and in the agent's one log
// line, that no GPU library was found and how to get simulated GPUs instead.
func TestCollectWithoutNVMLSuggestsTheSimulator(t *testing.T) {
	if _, err := os.Stat("/dev/nvidia0"); err == nil {
		t.Skip("this host has an NVIDIA GPU; the test is about hosts without one")
	}
	out, errOut, code := runCapstan(t, "collect", "--gpu.backend=auto", "--web.listen-address=")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	const hint = "no GPU library found (libnvidia-ml.so.1); for simulated GPUs, use --gpu.backend=sim"
	footer := out[strings.LastIndex(strings.TrimRight(out, "\n"), "\n")+1:]
	if !strings.HasPrefix(footer, "No GPUs: ") || !strings.Contains(footer, hint) {
		t.Errorf("the table's last line does not say why there are no GPUs; want %q in it:\n%s", hint, out)
	}
	if n := strings.Count(errOut, hint); n != 1 {
		t.Errorf("the hint is logged %d times, want once:\n%s", n, errOut)
	}
	// With the simulator asked for, there is nothing to explain.
	out, errOut, code = runCapstan(t, append([]string{"collect"}, simFlags...)...)
	if code != 0 || strings.Contains(out, "No GPUs") {
		t.Errorf("collect on the simulator: exit %d, output mentions missing GPUs:\n%s%s", code, out, errOut)
	}
}

// The documented example (docs/capstan.example.yaml, installed by the packages) is valid for
// the real binary, and its comments list every collector Capstan ships with its true defaults.
func TestExampleConfig(t *testing.T) {
	const path = "../../docs/capstan.example.yaml"
	out, errOut, code := runCapstan(t, "config", "check", path)
	if code != 0 || !strings.Contains(out, "is valid") {
		t.Fatalf("capstan config check %s: exit %d\n%s%s", path, code, out, errOut)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range collectors.Factories() {
		if f.Name == "gpu" { // set, not commented: the config package's test checks it
			continue
		}
		want := regexp.MustCompile(fmt.Sprintf(`(?m)^\s*#\s*%s:\s*\{enabled: %t, interval: %s\}`,
			regexp.QuoteMeta(f.Name), f.EnabledByDefault, f.Interval))
		if !want.Match(text) {
			t.Errorf("%s does not list collector %s with its defaults (enabled %t, every %s)", path, f.Name, f.EnabledByDefault, f.Interval)
		}
	}
}
