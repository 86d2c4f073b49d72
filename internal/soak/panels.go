package soak

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/soak/devstate"
	"github.com/prometheus/prometheus/promql/parser"
)

// panelResult is one dashboard query run against the soak's Prometheus.
type panelResult struct {
	Dashboard string `json:"dashboard"`
	Panel     string `json:"panel"`
	Expr      string `json:"expr"`
	// Fed: every metric the query reads exists in Prometheus, so it must return data.
	Fed    bool   `json:"fed"`
	Series int    `json:"series"`
	Error  string `json:"error,omitempty"`
}

var grafanaRange = regexp.MustCompile(`\$\{?__(?:rate_interval|interval)\}?`)

// checkPanels runs every panel query of deploy/grafana/*.json over the run so far: a query
// whose metrics Prometheus holds must return data.
func (h *harness) checkPanels() []panelResult {
	files, _ := filepath.Glob(filepath.Join(h.cfg.Repo, "deploy/grafana/*.json"))
	have, err := h.prom.names()
	if err != nil {
		h.check.Add("panel_data", &devstate.Violation{At: time.Now(), Detail: "listing Prometheus' metric names: " + err.Error()})
		return nil
	}
	var out []panelResult
	p := parser.NewParser(parser.Options{})
	to := time.Now()
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var dash struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &dash); err != nil {
			h.check.Add("panel_data", &devstate.Violation{At: time.Now(), Detail: fmt.Sprintf("%s: %v", f, err)})
			continue
		}
		for _, panel := range dash.Panels {
			for _, t := range panel.Targets {
				if t.Expr == "" {
					continue
				}
				expr := strings.ReplaceAll(t.Expr, "$instance", ".*")
				expr = grafanaRange.ReplaceAllString(expr, "30s")
				expr = strings.ReplaceAll(strings.ReplaceAll(expr, "${__range}", "$__range"), "$__range", fmt.Sprintf("%ds", int(to.Sub(h.started).Seconds())))
				r := panelResult{Dashboard: filepath.Base(f), Panel: panel.Title, Expr: expr, Fed: true}
				e, err := p.ParseExpr(expr)
				if err != nil {
					r.Error = err.Error()
					h.check.Add("panel_data", &devstate.Violation{At: time.Now(), Detail: fmt.Sprintf("%s %q: %v", r.Dashboard, r.Panel, err)})
					out = append(out, r)
					continue
				}
				parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok && !have[vs.Name] {
						r.Fed = false
					}
					return nil
				})
				if r.Fed {
					r.Series, err = h.prom.rangeSeries(expr, h.started, to, 5*time.Second)
					var v *devstate.Violation
					switch {
					case err != nil:
						r.Error = err.Error()
						v = &devstate.Violation{At: time.Now(), Detail: fmt.Sprintf("%s %q: %v", r.Dashboard, r.Panel, err)}
					case r.Series == 0:
						v = &devstate.Violation{At: time.Now(), Detail: fmt.Sprintf("%s %q: no data from %s", r.Dashboard, r.Panel, expr)}
					}
					h.check.Add("panel_data", v)
				}
				out = append(out, r)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Dashboard < out[j].Dashboard })
	return out
}
