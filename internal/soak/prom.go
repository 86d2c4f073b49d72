package soak

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/model"
	yaml "gopkg.in/yaml.v3"
)

// prometheus is a real Prometheus server scraping the agents and evaluating Capstan's rules.
type prometheus struct {
	addr  string
	cmd   *exec.Cmd
	done  chan struct{}
	rules string // the rule file it evaluates (the shipped one, `for:` scaled)
}

// scaleRules copies the rule file with every `for:` multiplied by scale (at least the
// evaluation interval), so that a short soak sees alerts whose `for` is minutes.
func scaleRules(src, dst string, scale float64, floor time.Duration) (map[string]string, error) {
	raw, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("reading the alert rules: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	scaled := map[string]string{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			alert := ""
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "alert" {
					alert = n.Content[i+1].Value
				}
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value != "for" || alert == "" {
					continue
				}
				d, err := model.ParseDuration(n.Content[i+1].Value)
				if err != nil {
					continue
				}
				nd := max(time.Duration(float64(d)*scale).Round(time.Second), floor)
				scaled[alert] = n.Content[i+1].Value + " → " + model.Duration(nd).String()
				n.Content[i+1].Value = model.Duration(nd).String()
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, err
	}
	return scaled, os.WriteFile(dst, out, 0o644)
}

func startPrometheus(bin, dir, rules string, targets []string, interval time.Duration) (*prometheus, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	var quoted []string
	for _, t := range targets {
		quoted = append(quoted, strconv.Quote(t))
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[1]s
rule_files: [%[2]q]
scrape_configs:
  - job_name: capstan
    static_configs:
      - targets: [%[3]s]
`, model.Duration(interval), rules, strings.Join(quoted, ", "))
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config.file="+confPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("starting Prometheus (%s): %w", bin, err)
	}
	p := &prometheus{addr: addr, cmd: cmd, done: make(chan struct{}), rules: rules}
	go func() { _ = cmd.Wait(); _ = log.Close(); close(p.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return nil, fmt.Errorf("prometheus exited during start-up; see %s", log.Name())
		case <-time.After(200 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + addr + "/-/ready"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
	}
	p.stop()
	return nil, fmt.Errorf("prometheus not ready after 60 s; see %s", log.Name())
}

func (p *prometheus) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// api GETs a Prometheus API path and decodes its data field into out.
func (p *prometheus) api(path string, q url.Values, out any) error {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + p.addr + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("%s: %s", path, raw)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s %s: %s", path, q.Encode(), env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

type promAlert struct {
	Labels   map[string]string `json:"labels"`
	State    string            `json:"state"`
	ActiveAt time.Time         `json:"activeAt"`
}

func (p *prometheus) alerts() ([]promAlert, error) {
	var out struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.api("/api/v1/alerts", nil, &out)
	return out.Alerts, err
}

// series counts the series a range query returns over [from, to].
func (p *prometheus) rangeSeries(query string, from, to time.Time, step time.Duration) (int, error) {
	var out struct {
		Result []json.RawMessage `json:"result"`
	}
	err := p.api("/api/v1/query_range", url.Values{
		"query": {query}, "start": {strconv.FormatInt(from.Unix(), 10)}, "end": {strconv.FormatInt(to.Unix(), 10)},
		"step": {strconv.Itoa(int(step.Seconds()))},
	}, &out)
	return len(out.Result), err
}

// names lists every metric name Prometheus holds.
func (p *prometheus) names() (map[string]bool, error) {
	var out []string
	if err := p.api("/api/v1/label/__name__/values", nil, &out); err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, n := range out {
		m[n] = true
	}
	return m, nil
}
