package exporters

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

// startWeb starts exporters serving the web endpoints on a free port of 127.0.0.1.
func startWeb(t *testing.T, store *sample.Store, webConfigFile string) *Exporters {
	t.Helper()
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	cfg.Web.Config.File = webConfigFile
	e := startExporters(t, Options{Config: cfg, Store: store, Version: "1.2.3-test"})
	return e
}

func get(t *testing.T, url, user, password string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// scrape fetches /metrics and parses it as Prometheus does.
func scrape(t *testing.T, e *Exporters) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, "http://"+e.Addr().String()+"/metrics", "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return testkit.ParseExposition(t, body)
}

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string)
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// series returns the value of the series of family name whose labels include want.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no family %s", name)
	}
	if f.GetType() != typ {
		t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
	}
	for _, m := range f.GetMetric() {
		got := labels(m)
		match := true
		for k, v := range want {
			if got[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch typ {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		default:
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s series with labels %v", name, want)
	return 0
}

// TestPrometheusScrape scrapes /metrics over HTTP and checks families, types, labels, values,
// the target_info resource and the agent's own process metrics.
func TestPrometheusScrape(t *testing.T) {
	store := sample.NewStore()
	store.Put("gpu", newFleet(2).batch(5000))
	e := startWeb(t, store, "")
	fams := scrape(t, e)

	gpu1 := map[string]string{"hw_type": "gpu", "hw_id": gpuUUID(1), "hw_name": "NVIDIA H100 80GB HBM3", "gpu_index": "1"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for a, b := range gpu1 {
			m[a] = b
		}
		return m
	}
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels map[string]string
		want   float64
	}{
		{"hw_power_watts", dto.MetricType_GAUGE, gpu1, 310},
		{"hw_energy_joules_total", dto.MetricType_COUNTER, gpu1, 6000},
		{"hw_temperature_celsius", dto.MetricType_GAUGE, with("hw_sensor_location", "gpu"), 61},
		{"hw_gpu_memory_usage_bytes", dto.MetricType_GAUGE, gpu1, 40e9},
		{"hw_gpu_utilization_ratio", dto.MetricType_GAUGE, with("hw_gpu_task", "general"), 0.9},
		{"hw_gpu_io_bytes_total", dto.MetricType_COUNTER, with("network_io_direction", "transmit"), 2e12 + 1},
		{"hw_errors_total", dto.MetricType_COUNTER, with("error_type", "xid"), 1},
		{"capstan_gpu_clock_hertz", dto.MetricType_GAUGE, with("capstan_clock_domain", "memory"), 2.6e9},
		{"capstan_gpu_power_limit_watts", dto.MetricType_GAUGE, with("capstan_limit_kind", "min"), 200},
		{"capstan_collector_up", dto.MetricType_GAUGE, map[string]string{"collector": "gpu"}, 1},
		{"capstan_collector_duration_seconds", dto.MetricType_GAUGE, map[string]string{"collector": "gpu"}, 0.0042},
	} {
		if got := series(t, fams, c.name, c.typ, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := len(fams["hw_power_watts"].GetMetric()); n != 2 {
		t.Errorf("hw_power_watts has %d series, want one per GPU (2)", n)
	}
	if got := labels(fams["hw_power_watts"].GetMetric()[0]); len(got) != 4 {
		t.Errorf("hw_power_watts labels %v, want exactly the 4 GPU labels (no scope labels)", got)
	}
	if !strings.Contains(fams["hw_power_watts"].GetHelp(), "GetPowerUsage") {
		t.Errorf("hw_power_watts help %q is not the table's description", fams["hw_power_watts"].GetHelp())
	}

	info := labels(fams["target_info"].GetMetric()[0])
	for k, v := range map[string]string{"service_name": "capstan", "service_version": "1.2.3-test", "host_name": "node-a"} {
		if info[k] != v {
			t.Errorf("target_info %s = %q, want %q (%v)", k, info[k], v, info)
		}
	}
	for _, name := range []string{"process_resident_memory_bytes", "go_goroutines", "promhttp_metric_handler_requests_total"} {
		if fams[name] == nil {
			t.Errorf("no %s: the agent's own metrics are missing", name)
		}
	}

	// A collector whose batch is gone leaves no stale series behind.
	store.Delete("gpu")
	if fams := scrape(t, e); fams["hw_power_watts"] != nil {
		t.Errorf("hw_power_watts still exported after its batch was deleted: %v", fams["hw_power_watts"])
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := startWeb(t, sample.NewStore(), "")
	base := "http://" + e.Addr().String()
	if code, _ := get(t, base+"/healthz", "", ""); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := get(t, base+"/readyz", "", ""); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before SetReady = %d, want 503", code)
	}
	e.SetReady(true)
	if code, _ := get(t, base+"/readyz", "", ""); code != http.StatusOK {
		t.Errorf("/readyz after SetReady(true) = %d, want 200", code)
	}
	e.SetReady(false)
	if code, _ := get(t, base+"/readyz", "", ""); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after SetReady(false) = %d, want 503", code)
	}
	if code, body := get(t, base+"/", "", ""); code != http.StatusOK || !strings.Contains(body, "/metrics") {
		t.Errorf("landing page: %d, want 200 linking /metrics:\n%s", code, body)
	}
	if code, _ := get(t, base+"/nope", "", ""); code != http.StatusNotFound {
		t.Errorf("/nope = %d, want 404", code)
	}
}

// TestBasicAuth serves with an exporter-toolkit web config file holding a bcrypt hash.
func TestBasicAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "web-config.yml")
	if err := os.WriteFile(file, []byte("basic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := sample.NewStore()
	store.Put("gpu", newFleet(1).batch(5000))
	e := startWeb(t, store, file)
	url := "http://" + e.Addr().String() + "/metrics"
	if code, _ := get(t, url, "", ""); code != http.StatusUnauthorized {
		t.Errorf("scrape without credentials = %d, want 401", code)
	}
	if code, _ := get(t, url, "prometheus", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("scrape with a wrong password = %d, want 401", code)
	}
	code, body := get(t, url, "prometheus", "s3cret")
	if code != http.StatusOK || !strings.Contains(body, "hw_power_watts{") {
		t.Errorf("scrape with the password = %d, want 200 with hw_power_watts", code)
	}
}

func TestBadWebConfigFailsStart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "web-config.yml")
	if err := os.WriteFile(file, []byte("basic_auth_users: [not, a, map]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Web.ListenAddress = "127.0.0.1:0"
	cfg.Web.Config.File = file
	e := newExporters(t, Options{Config: cfg, Store: sample.NewStore()})
	if err := e.Start(context.Background()); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("Start with a bad web config: %v, want an error naming %s", err, file)
	}
}
