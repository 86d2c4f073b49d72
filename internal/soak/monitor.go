package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// Scrapers is how many clients scrape one agent's /metrics at once.
const Scrapers = 20

func (h *harness) startMonitors(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() { h.watchDevices(ctx) })
	wg.Go(func() { h.watchProcesses(ctx) })
	wg.Go(func() { h.scrapeBursts(ctx) })
	wg.Go(func() { h.watchAlerts(ctx) })
}

// watchDevices reads every node's device state at 5 Hz and checks the invariants on it.
func (h *harness) watchDevices(ctx context.Context) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastPoint := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			states := map[string]*devstate.State{}
			up := 0
			for _, a := range h.agents {
				if s := h.readState(a); s != nil {
					states[a.name] = s
				}
				if a.current() != nil {
					up++
				}
			}
			h.check.Round(now, states)
			if now.Sub(lastPoint) >= time.Second {
				lastPoint = now
				p := timePoint{T: now.Sub(h.started).Seconds(), AgentsUp: up}
				for _, s := range states {
					p.LimitsW += s.SumLimitW()
					p.EnforcW += s.SumEnforcedW()
					p.DrawW += s.SumPowerW()
				}
				for _, a := range h.agents {
					p.BudgetW += a.ownBudget()
				}
				h.mu.Lock()
				p.BudgetW += h.budgetNow
				h.timeline = append(h.timeline, p)
				h.mu.Unlock()
			}
		}
	}
}

// watchProcesses samples every running agent's RSS and goroutines every 2 s.
func (h *harness) watchProcesses(ctx context.Context) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if h.stopping.Load() {
				continue // the final stop is no steady state
			}
			for _, a := range h.agents {
				if a.current() == nil {
					continue
				}
				if g, ok := goroutines(client, a.addr); ok {
					a.sample(now, g)
				}
			}
		}
	}
}

// goroutines reads go_goroutines from an agent's /metrics.
func goroutines(client *http.Client, addr string) (int, bool) {
	page, err := scrape(client, addr)
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(page, "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err == nil
		}
	}
	return 0, false
}

// scrapeBursts has Scrapers clients scrape one agent's /metrics at once, every second, the
// agents in turn, and records every latency. A failure counts only when the same process was
// running, ready and not being stopped before and after the burst.
func (h *harness) scrapeBursts(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: Scrapers}}
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a := h.agents[next%len(h.agents)]
		next++
		p := a.current()
		if p == nil || a.readyAt(p).IsZero() || h.stopping.Load() {
			continue
		}
		var mu sync.Mutex
		var lat []float64
		var fails []string
		var wg sync.WaitGroup
		for range Scrapers {
			wg.Go(func() {
				start := time.Now()
				resp, err := client.Get("http://" + a.addr + "/metrics")
				ms := float64(time.Since(start).Microseconds()) / 1000
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				mu.Lock()
				defer mu.Unlock()
				if ok {
					lat = append(lat, ms)
				} else {
					why := fmt.Sprint(err)
					if err == nil {
						why = resp.Status
					}
					fails = append(fails, why)
				}
			})
		}
		wg.Wait()
		a.mu.Lock()
		same := a.proc == p && p.signalled == ""
		a.mu.Unlock()
		if !same || a.current() != p {
			continue // stopped or killed by the harness meanwhile
		}
		h.mu.Lock()
		h.latencies = append(h.latencies, lat...)
		for _, f := range fails {
			if len(h.scrapeFail) < 20 {
				h.scrapeFail = append(h.scrapeFail, a.name+": "+f)
			}
		}
		h.mu.Unlock()
		if len(fails) > 0 {
			h.check.Add("metrics_answer", &devstate.Violation{At: time.Now(), Node: a.name, Detail: fmt.Sprintf("%d of %d concurrent scrapes failed: %s", len(fails), Scrapers, fails[0])})
		} else {
			h.check.Add("metrics_answer", nil)
		}
	}
}

// watchAlerts polls Prometheus' alerts every second and keeps when each fired where; any
// alert firing in the quiet stretch is a violation.
func (h *harness) watchAlerts(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	quietReported := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			alerts, err := h.prom.alerts()
			if err != nil {
				continue
			}
			h.mu.Lock()
			quiet := !now.Before(h.quiet[0]) && now.Before(h.quiet[1])
			for _, al := range alerts {
				if al.State != "firing" {
					continue
				}
				name := al.Labels["alertname"]
				h.alertObs[name] = append(h.alertObs[name], alertSighting{At: now, Instance: al.Labels["instance"]})
				if quiet && !quietReported[name] {
					quietReported[name] = true
					h.mu.Unlock()
					h.check.Add("no_alert_when_quiet", &devstate.Violation{At: now, Node: al.Labels["instance"],
						Detail: fmt.Sprintf("%s fired in the quiet stretch before any fault: %v", name, al.Labels)})
					h.mu.Lock()
				}
			}
			h.mu.Unlock()
		}
	}
}

// checkAlerts requires every fault that expects an alert to have made it fire, on the
// faulted node's instance, between the fault's start and a minute after its end.
func (h *harness) checkAlerts() {
	h.mu.Lock()
	faults := append([]*faultRecord(nil), h.faults...)
	quietEnd := h.quiet[1]
	h.mu.Unlock()
	if !quietEnd.IsZero() {
		h.check.Add("no_alert_when_quiet", nil)
	}
	for _, r := range faults {
		if r.Alert == "" || r.Error != "" {
			continue
		}
		h.mu.Lock()
		fired := false
		for _, s := range h.alertObs[r.Alert] {
			if !s.At.Before(r.Start) && s.At.Before(r.End.Add(time.Minute)) && (r.instance == "" || s.Instance == r.instance) {
				fired = true
				break
			}
		}
		r.Fired = &fired
		h.mu.Unlock()
		var v *devstate.Violation
		if !fired {
			v = &devstate.Violation{At: r.End, Node: r.Node, Detail: fmt.Sprintf("%s did not fire for %s (%s)", r.Alert, r.Kind, r.Detail)}
		}
		h.check.Add("alert_fires", v)
	}
}
