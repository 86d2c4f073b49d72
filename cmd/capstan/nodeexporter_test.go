package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
	"github.com/capstan-power/capstan/internal/ttar"
)

// TestSideBySideNodeExporter runs the agent's host collectors (cpufreq, thermal with hwmon and
// RAPL, nic) and node_exporter's equivalents (cpufreq, thermal_zone, hwmon, rapl, netclass,
// netdev) on node_exporter's own sysfs fixture, scrapes both at 5 Hz, and reports each one's CPU
// per scrape and peak RSS from /proc. The agent collects at the scrape rate (every 200 ms), so
// both read the same files as often. `make bench` builds node_exporter (pinned) and runs this
// with CAPSTAN_SIDE_BY_SIDE=60s; the targets are ≤ 0.5× node_exporter's CPU per scrape and a
// peak RSS no larger than node_exporter's.
func TestSideBySideNodeExporter(t *testing.T) {
	spec := os.Getenv("CAPSTAN_SIDE_BY_SIDE")
	if spec == "" {
		t.Skip("set CAPSTAN_SIDE_BY_SIDE=60s and CAPSTAN_NODE_EXPORTER to a node_exporter binary (make bench does)")
	}
	length, err := time.ParseDuration(spec)
	if err != nil {
		t.Fatalf("CAPSTAN_SIDE_BY_SIDE=%q: %v", spec, err)
	}
	nodeExporter := os.Getenv("CAPSTAN_NODE_EXPORTER")
	if nodeExporter == "" {
		t.Fatal("CAPSTAN_NODE_EXPORTER names no node_exporter binary")
	}
	sysfs := nodeExporterFixture(t, nodeExporter)

	// Both start as a daemon does at boot, with none of their binary in the page cache: on a
	// freshly written binary the kernel maps every cached page around a fault, so the resident
	// size would depend on which binary was written last rather than on what each one touches.
	dropFromPageCache(t, binary)
	dropFromPageCache(t, nodeExporter)

	capAddr, neAddr := otlptest.FreeAddr(t), otlptest.FreeAddr(t)
	a := startAgent(t, "--path.sysfs="+sysfs, "--gpu.backend=none", "--no-collector.gpu",
		"--collector.cpufreq.interval=200ms", "--collector.thermal.interval=200ms",
		"--collector.nic.interval=200ms", "--web.listen-address="+capAddr)
	ne := exec.Command(nodeExporter, "--path.sysfs="+sysfs, "--collector.disable-defaults",
		"--collector.cpufreq", "--collector.thermal_zone", "--collector.hwmon", "--collector.rapl",
		"--collector.netclass", "--collector.netdev", "--web.listen-address="+neAddr, "--log.level=warn")
	var neLog bytes.Buffer
	ne.Stdout, ne.Stderr = &neLog, &neLog
	if err := ne.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ne.Process.Kill(); _ = ne.Wait() }()
	a.waitLog(t, "agent ready")
	client := &http.Client{Timeout: 5 * time.Second}
	if !testkit.Poll(agentWait, func() bool { _, err := fetchMetrics(client, neAddr); return err == nil }) {
		t.Fatalf("node_exporter never answered on %s:\n%s", neAddr, neLog.String())
	}
	// Both expose something from the fixture: a comparison against an empty answer means nothing.
	for name, probe := range map[string]struct{ addr, series string }{
		"capstan":       {capAddr, "capstan_cpu_frequency_limit_hertz"},
		"node_exporter": {neAddr, "node_cpu_scaling_frequency_max_hertz"},
	} {
		body, err := fetchMetrics(client, probe.addr)
		if err != nil || !bytes.Contains(body, []byte(probe.series)) {
			t.Fatalf("%s shows no %s from the fixture (%v)", name, probe.series, err)
		}
	}

	procs := []struct {
		name string
		pid  int
		addr string
	}{{"capstan", a.cmd.Process.Pid, capAddr}, {"node_exporter", ne.Process.Pid, neAddr}}
	cpu0 := []float64{cpuSeconds(t, procs[0].pid), cpuSeconds(t, procs[1].pid)}
	var took [2][]time.Duration
	var lines [2]int
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for n := 0; time.Since(start) < length; n++ {
		<-tick.C
		// Alternate who goes first, so neither always scrapes on a machine the other just used.
		for k := range 2 {
			i := (n + k) % 2
			t0 := time.Now()
			body, err := fetchMetrics(client, procs[i].addr)
			if err != nil {
				t.Fatalf("scraping %s: %v", procs[i].name, err)
			}
			took[i] = append(took[i], time.Since(t0))
			lines[i] = bytes.Count(body, []byte("\n"))
		}
	}
	elapsed := time.Since(start)
	var cpuPerScrape, peak [2]float64
	for i, p := range procs {
		cpuPerScrape[i] = (cpuSeconds(t, p.pid) - cpu0[i]) / float64(len(took[i]))
		peak[i] = float64(statusKiB(t, p.pid, "VmHWM")) / 1024
		slices.Sort(took[i])
		fmt.Printf("side by side: %-13s %d scrapes in %s: CPU %.2f ms per scrape, scrape median %.2f ms, %d lines; peak RSS %.1f MiB (anon %.1f, file %.1f now)\n",
			p.name, len(took[i]), elapsed.Round(time.Second), 1000*cpuPerScrape[i], float64(took[i][len(took[i])/2].Microseconds())/1000,
			lines[i], peak[i], float64(statusKiB(t, p.pid, "RssAnon"))/1024, float64(statusKiB(t, p.pid, "RssFile"))/1024)
	}
	fmt.Printf("side by side: capstan/node_exporter CPU per scrape %.2f× (target ≤ 0.5×), peak RSS %.2f× (target ≤ 1×)\n",
		cpuPerScrape[0]/cpuPerScrape[1], peak[0]/peak[1])
	if code := a.stop(t); code != 0 {
		t.Errorf("agent exit %d", code)
	}
}

func fetchMetrics(c *http.Client, addr string) ([]byte, error) {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return body, err
}

// nodeExporterFixture unpacks collector/fixtures/sys.ttar of the node_exporter module the binary
// was built from (its version from the binary's build information, its files from the module
// cache) and returns the sysfs root in it.
func nodeExporterFixture(t *testing.T, bin string) string {
	t.Helper()
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("reading the build information of %s: %v", bin, err)
	}
	mod := info.Main.Path + "@" + info.Main.Version
	if info.Main.Path != "github.com/prometheus/node_exporter" || !strings.HasPrefix(info.Main.Version, "v") {
		t.Fatalf("%s is not node_exporter installed from the module proxy (main module %s)", bin, mod)
	}
	// Outside this module, so that asking for node_exporter's files cannot touch go.mod.
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", mod, err, out)
	}
	var dl struct{ Dir string }
	if err := json.Unmarshal(out, &dl); err != nil || dl.Dir == "" {
		t.Fatalf("go mod download %s gave no directory (%v): %s", mod, err, out)
	}
	archive := filepath.Join(dl.Dir, "collector", "fixtures", "sys.ttar")
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	if err := ttar.Extract(f, archive, dir); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "sys")
}

// dropFromPageCache asks the kernel to drop the file's cached pages, written back first: a
// binary just built is still dirty in the cache, and dirty pages are not dropped.
func dropFromPageCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatalf("writing %s back: %v", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("dropping %s from the page cache: %v", path, err)
	}
}
