package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/pflag"

	"github.com/capstan-power/capstan/exporters"
	"github.com/capstan-power/capstan/internal/agent"
	"github.com/capstan-power/capstan/internal/clock"
	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
	"github.com/capstan-power/capstan/internal/version"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ instead of comparing with them")

// The golden tests show what a user of the agent sees, /metrics and `capstan collect --json`,
// over the simulated fleet and a fixture host, so that any change to it is a diff to review.
// Rewrite the files with
//
//	go test ./cmd/capstan -run Golden -update
//
// and read the diff before committing it.

// goldenStart is the time of the manual clock the golden agent runs on. The simulated fleet
// starts when it is opened and is only moved by this clock, so every GPU reads as at its start.
var goldenStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// goldenFlags configure the agent of the golden tests: two simulated H100s with the default
// seed and trace, and the intel fixture host's sysfs. Each collector's interval is an hour, so
// that only the first collection of each is ever shown: the test never waits that long.
func goldenFlags() []string {
	return []string{
		"--node.name=golden",
		"--gpu.backend=sim", "--gpu.sim.count=2", "--gpu.sim.model=H100", "--gpu.sim.trace=training", "--gpu.sim.seed=1", "--gpu.sim.mig=off;3g.40gb,2x2g.20gb",
		"--path.sysfs=" + hostfixtures.Sysfs(hostfixtures.Intel),
		"--path.procfs=" + hostfixtures.Procfs(hostfixtures.Intel),
		"--collector.gpu.interval=1h", "--collector.cpufreq.interval=1h", "--collector.thermal.interval=1h",
		// nic reads this machine's real links over netlink (and no fixture can stand in for
		// netlink), workload this machine's cgroups and BPF: both would differ between hosts.
		"--no-collector.nic", "--no-collector.workload",
	}
}

// goldenConfig resolves args as the capstan command resolves its flags.
func goldenConfig(t *testing.T, args ...string) *config.Config {
	t.Helper()
	// The resource reads these; a developer's or CI's environment must not change the output.
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("NODE_NAME", "")
	cfg := config.Default()
	fs := pflag.NewFlagSet("capstan", pflag.ContinueOnError)
	config.BindFlags(fs, cfg)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := config.Resolve(fs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCollectJSONGolden compares `capstan collect --json` with testdata/collect.golden.json. It
// runs in the test process, as the collect command does (agent.CollectOnce), but on a manual
// clock: the simulated GPUs move every 10 ms of real time, so the binary's output depends on how
// long the first collection took to start.
func TestCollectJSONGolden(t *testing.T) {
	cfg := goldenConfig(t, goldenFlags()...)
	log, logs := testkit.NewLogger()
	p, err := agent.NewPipeline(cfg, log, clock.NewManual(goldenStart))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Runner.CollectOnce(context.Background())
	points := agent.Snapshot(p.Store, exporters.NewResource(cfg, version.Version))
	checkGoldenLogs(t, logs)

	var out bytes.Buffer
	if err := agent.WriteJSON(&out, points); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "collect.golden.json"), normaliseCollectJSON(out.Bytes()))
}

// normaliseCollectJSON replaces what differs between runs or machines in collect's output:
//   - capstan.collector.duration: how long a collection took (zero on the manual clock today,
//     but a duration is not part of what the golden file pins);
//   - host.id: this machine's /etc/machine-id.
func normaliseCollectJSON(b []byte) []byte {
	b = collectDuration.ReplaceAll(b, []byte(`${1}"<duration>"`))
	return hostIDJSON.ReplaceAll(b, []byte(`${1}"<machine-id>"`))
}

var (
	// A duration point's value line, which the encoder writes after its name, unit and type.
	collectDuration = regexp.MustCompile(`("name": "capstan\.collector\.duration",\n(?:\s+"(?:unit|type)": "[^"]*",\n)*\s+"value": )[^,\n]+`)
	hostIDJSON      = regexp.MustCompile(`("host\.id": )"[^"]*"`)
)

// TestMetricsGolden runs the agent on a manual clock, scrapes /metrics once every collector has
// reported, and compares it with testdata/metrics.golden.txt.
func TestMetricsGolden(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	cfg := goldenConfig(t, append(goldenFlags(), "--web.listen-address="+addr)...)
	log, logs := testkit.NewLogger()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, cfg, agent.Options{Log: log, Clock: clock.NewManual(goldenStart)}) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := testkit.Receive(t, done, testkit.DefaultWait, "the agent to stop"); err != nil {
			t.Errorf("agent: %v", err)
		}
	}
	defer stop()

	base := "http://" + addr
	testkit.WaitFor(t, "/readyz to answer 200", func() bool {
		select {
		case err := <-done:
			t.Fatalf("the agent stopped before it was ready: %v\n%s", err, logs)
		default:
		}
		code, _, err := fetch(base + "/readyz")
		return err == nil && code == http.StatusOK
	})
	code, body, err := fetch(base + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	stop()
	checkGoldenLogs(t, logs)

	// The exposition must parse as Prometheus parses it before it is compared.
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	checkGolden(t, filepath.Join("testdata", "metrics.golden.txt"), normaliseMetrics(body))
}

// fetch GETs url uncompressed.
func fetch(url string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// normaliseMetrics makes a /metrics scrape comparable between runs and machines:
//   - the go_* and process_* families (the test process's runtime, which the test checks is
//     there) are left out whole;
//   - capstan_collector_duration_seconds values become <duration>, as in collect's output;
//   - target_info's host_id (this machine's /etc/machine-id) becomes <machine-id>;
//   - the series of each family are sorted: within a family they follow the order in which
//     the collectors first reported, which varies from run to run (Prometheus ignores it).
//
// Nothing else varies: no port or path appears in the exposition.
func normaliseMetrics(text []byte) []byte {
	var out []string
	var series []string
	flush := func() {
		slices.Sort(series)
		out = append(out, series...)
		series = series[:0]
	}
	skip := false
	for line := range strings.SplitSeq(strings.TrimSuffix(string(text), "\n"), "\n") {
		if strings.HasPrefix(line, "# HELP ") {
			flush()
			name, _, _ := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			skip = strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
		}
		switch {
		case skip:
		case strings.HasPrefix(line, "#"):
			out = append(out, line)
		case strings.HasPrefix(line, "capstan_collector_duration_seconds{"):
			i := strings.LastIndexByte(line, ' ')
			series = append(series, line[:i+1]+"<duration>")
		default:
			series = append(series, hostIDLabel.ReplaceAllString(line, `host_id="<machine-id>"`))
		}
	}
	flush()
	return []byte(strings.Join(out, "\n") + "\n")
}

var hostIDLabel = regexp.MustCompile(`host_id="[^"]*"`)

// checkGoldenLogs fails on what must not happen in a golden run: a collector down, an error,
// a panic.
func checkGoldenLogs(t *testing.T, logs *testkit.LogBuffer) {
	t.Helper()
	if s := logs.String(); strings.Contains(s, "level=ERROR") || strings.Contains(s, "panic") {
		t.Errorf("errors in the log:\n%s", s)
	}
}

// checkGolden compares got with the golden file at path, or rewrites the file with -update.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v (run with -update to create it)", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (rerun with -update and review the diff):\n%s", path, lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines only in want (-) or only in got (+), each with its line number,
// enough to see what moved.
func lineDiff(want, got string) string {
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	count := map[string]int{}
	for _, l := range wantLines {
		count[l]++
	}
	for _, l := range gotLines {
		count[l]--
	}
	var sb strings.Builder
	for i, l := range wantLines {
		if count[l] > 0 {
			fmt.Fprintf(&sb, "- %5d: %s\n", i+1, l)
			count[l]--
		}
	}
	for i, l := range gotLines {
		if count[l] < 0 {
			fmt.Fprintf(&sb, "+ %5d: %s\n", i+1, l)
			count[l]++
		}
	}
	return sb.String()
}
