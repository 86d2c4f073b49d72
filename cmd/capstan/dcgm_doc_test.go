package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/capstan-power/capstan/exporters"
	"github.com/capstan-power/capstan/internal/metrics"
)

// dcgmFields are every DCGM field of dcgm-exporter's etc/default-counters.csv and
// etc/dcp-metrics-included.csv (commit d5e5f51), commented out or not.
var dcgmFields = []string{
	"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_GPU_TEMP",
	"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_PROF_PCIE_TX_BYTES",
	"DCGM_FI_PROF_PCIE_RX_BYTES", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_GPU_UTIL",
	"DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS",
	"DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION", "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",
	"DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", "DCGM_FI_DEV_LOW_UTIL_VIOLATION", "DCGM_FI_DEV_RELIABILITY_VIOLATION",
	"DCGM_EXP_CLOCK_EVENTS_COUNT", "DCGM_EXP_XID_ERRORS_COUNT", "DCGM_EXP_GPU_HEALTH_STATUS", "DCGM_EXP_P2P_STATUS",
	"DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
	"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
	"DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "DCGM_FI_DEV_RETIRED_SBE", "DCGM_FI_DEV_RETIRED_DBE", "DCGM_FI_DEV_RETIRED_PENDING",
	"DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
	"DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
	"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
	"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_ROW_REMAP_FAILURE",
	"DCGM_FI_DRIVER_VERSION", "DCGM_FI_NVML_VERSION", "DCGM_FI_DEV_BRAND", "DCGM_FI_DEV_SERIAL",
	"DCGM_FI_DEV_OEM_INFOROM_VER", "DCGM_FI_DEV_ECC_INFOROM_VER", "DCGM_FI_DEV_POWER_INFOROM_VER",
	"DCGM_FI_DEV_INFOROM_IMAGE_VER", "DCGM_FI_DEV_VBIOS_VERSION",
	"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_SM_OCCUPANCY",
	"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_PROF_PIPE_FP64_ACTIVE",
	"DCGM_FI_PROF_PIPE_FP32_ACTIVE", "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
}

// The migration guide answers every dcgm-exporter field, and every Prometheus metric and label
// its PromQL names is one Capstan exports: a renamed metric breaks this test, not a dashboard.
func TestDCGMMigrationGuide(t *testing.T) {
	text, err := os.ReadFile("../../docs/dcgm-exporter.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(text)
	for _, f := range dcgmFields {
		if !strings.Contains(doc, "| `"+f+"`") {
			t.Errorf("docs/dcgm-exporter.md has no row for %s", f)
		}
	}
	// The last column of each field's row is PromQL, which must parse.
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "| `DCGM_") {
			continue
		}
		cells := strings.Split(strings.ReplaceAll(line, `\|`, "¦"), " | ")
		last := strings.TrimSuffix(cells[len(cells)-1], " |")
		for _, q := range regexp.MustCompile("`([^`]*)`").FindAllStringSubmatch(last, -1) {
			expr := strings.ReplaceAll(q[1], "¦", "|")
			if _, err := parser.NewParser(parser.Options{}).ParseExpr(expr); err != nil {
				t.Errorf("PromQL for %s does not parse: %s: %v", cells[0], expr, err)
			}
		}
	}
	names := map[string]bool{}
	labels := map[string]bool{"instance": true, "job": true}
	attrs := map[string]bool{}
	for _, d := range metrics.Table {
		n, err := exporters.PrometheusName(d)
		if err != nil {
			t.Fatal(err)
		}
		names[n] = true
		for _, a := range d.Attributes {
			labels[strings.ReplaceAll(a, ".", "_")] = true
			attrs[a] = true
		}
	}
	metricRef := regexp.MustCompile(`\b((?:capstan|hw)_[a-z0-9_]+)\b`)
	labelRef := regexp.MustCompile(`\b([a-z_]+)(?:=|!=|=~)"`)
	code := regexp.MustCompile("`([^`]*)`")
	quoted := regexp.MustCompile(`"[^"]*"`)
	otelRef := regexp.MustCompile(`^((?:capstan|hw)\.[a-z0-9_.]+)(?:\{|$)`)
	for _, span := range code.FindAllStringSubmatch(doc, -1) {
		if m := otelRef.FindStringSubmatch(span[1]); m != nil {
			// An OpenTelemetry name, as docs/metrics.md lists it: a metric or an attribute.
			if metrics.ByName(m[1]) == nil && !attrs[m[1]] {
				t.Errorf("docs/dcgm-exporter.md names %s, which is not in the metric table", m[1])
			}
			continue
		}
		for _, m := range metricRef.FindAllStringSubmatch(quoted.ReplaceAllString(span[1], `""`), -1) {
			if !names[m[1]] && !labels[m[1]] {
				t.Errorf("docs/dcgm-exporter.md names %s, which Capstan does not export (in `%s`)", m[1], span[1])
			}
		}
		for _, l := range labelRef.FindAllStringSubmatch(span[1], -1) {
			if !labels[l[1]] {
				t.Errorf("docs/dcgm-exporter.md uses label %s, which no Capstan metric has (in `%s`)", l[1], span[1])
			}
		}
	}
}
