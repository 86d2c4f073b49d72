// Package soak is Capstan's chaos soak (`make soak`): it starts the real binaries — agents on
// simulated GPUs capping under a cluster budget, a three-member etcd cluster of their own
// processes, the OpenTelemetry Collector's OTLP receiver behind a proxy it controls, and a
// real Prometheus evaluating Capstan's alert rules — injects every fault kind on a seeded
// random schedule, and checks invariants from the outside: the GPUs' side (the sim's
// device-state files), the processes' fate, what the receiver and Prometheus got. It writes
// soak-report.json and a plot, and fails on any violation.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/capstan-power/capstan/internal/hostfixtures"
	"github.com/capstan-power/capstan/internal/soak/chaosproxy"
	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// Config is one soak run.
type Config struct {
	// Duration is the whole run, from the first process started to the report (builds apart).
	Duration time.Duration
	Seed     uint64
	// Out receives soak-report.json, soak.png and logs/.
	Out string
	// Repo is the module's root, where the binaries are built from.
	Repo string
	// Prometheus is the prometheus binary.
	Prometheus string
	// Self is the harness's own binary, run with MemberCommand for each etcd member.
	Self   string
	Agents int
	GPUs   int
	// Period is the agents' control period.
	Period time.Duration
	// Settle is how long after a budget cut Σ limits may stay above it.
	Settle time.Duration
	// AlertForScale multiplies every rule's `for:` (0.1 turns 5m into 30s).
	AlertForScale float64
	// FaultEvery spaces the faults drawn after every kind ran once.
	FaultEvery time.Duration
	// OTLPInterval is the agents' export interval.
	OTLPInterval time.Duration
	Log          io.Writer
}

type binaries struct{ capstan, capstanctl string }

// MinAlertFor is the shortest `for:` a scaled rule gets. A rule's `for` is the margin it gives
// the loop (CapstanNodeOverBudget's minute covers a budget cut's settling and a grant's way
// through etcd, several seconds on a busy machine): scaled below this, an alert fires on what
// the rule means to let pass.
const MinAlertFor = 15 * time.Second

type harness struct {
	cfg    Config
	bin    binaries
	work   string
	group  string
	agents []*agent
	etcd   *etcdCluster
	otlp   *otlpSink
	// otlpProxy stands between every agent and the receiver.
	otlpProxy *chaosproxy.HTTP
	prom      *prometheus
	check     *devstate.Checker
	veth      string
	// noSensorTree says why the agents' sysfs is a plain copy, not served through FUSE (the
	// sensor faults are skipped with it).
	noSensorTree string

	floorW, baseBudgetW, sumMinW float64
	alertScaled                  map[string]string

	rngMu sync.Mutex
	rng   *rand.Rand

	stopping atomic.Bool
	mu       sync.Mutex
	// defaults are each node's GPUs' default limits by UUID: the originals, as every GPU
	// starts at its default.
	defaults  map[string]map[string]int64
	budgetNow float64
	floorNow  float64
	// busy counts the faults in flight per domain ("etcd", "node:node-1", …); ended is when
	// the last one of a domain ended.
	busy       map[string]int
	ended      map[string]time.Time
	faults     []*faultRecord
	skipped    map[string]string
	crashes    []crashRecord
	successors []successorRecord
	reloads    map[string][]time.Time
	outages    []outageRecord
	timeline   []timePoint
	latencies  []float64
	scrapeFail []string
	alertObs   map[string][]alertSighting
	quiet      [2]time.Time
	started    time.Time
}

type crashRecord struct {
	Node   string    `json:"node"`
	PID    int       `json:"pid"`
	At     time.Time `json:"at"`
	Status string    `json:"status"`
	Detail string    `json:"detail"`
}

type successorRecord struct {
	Node   string    `json:"node"`
	At     time.Time `json:"at"`
	Mode   string    `json:"after_crash"`
	Result string    `json:"seen"`
	Detail string    `json:"detail"`
}

type outageRecord struct {
	Kind  string             `json:"kind"`
	Ended time.Time          `json:"ended"`
	Delay map[string]float64 `json:"first_data_after_s"`
}

type timePoint struct {
	T        float64 `json:"t_s"`
	BudgetW  float64 `json:"budget_w"`
	LimitsW  float64 `json:"sum_limits_w"`
	EnforcW  float64 `json:"sum_enforced_w"`
	DrawW    float64 `json:"sum_draw_w"`
	AgentsUp int     `json:"agents_up"`
}

type alertSighting struct {
	At       time.Time
	Instance string
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.cfg.Log, "%s soak: %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (h *harness) skip(kind, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.skipped[kind]; !ok {
		h.skipped[kind] = why
	}
}

func (h *harness) recordFault(r *faultRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = append(h.faults, r)
}

func (h *harness) inFlight(domain string, d int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.busy[domain] += d
	if d < 0 {
		h.ended[domain] = time.Now()
	}
}

// Settling is how long goroutines take to come back after a fault (an etcd client's watches
// after the cluster healed).
const settling = 15 * time.Second

// steady tells whether no fault that moves an agent's goroutines is in flight for node: none
// of its own and no etcd fault (the client's goroutines follow the cluster's state).
func (h *harness) steady(node string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range []string{"etcd", "node:" + node} {
		if h.busy[d] > 0 || time.Since(h.ended[d]) < settling {
			return false
		}
	}
	return true
}

func (h *harness) reloaded(node string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reloads[node] = append(h.reloads[node], time.Now())
}

// restartedBetween tells whether node had a process start or a reload in (from, to], or a
// reload shortly before: a cumulative counter may start again there (a reload builds a new
// pipeline, and the old one's last export may still arrive after the new one's first).
func (h *harness) restartedBetween(node string, from, to time.Time) bool {
	h.mu.Lock()
	for _, t := range h.reloads[node] {
		if t.After(from.Add(-3*h.cfg.OTLPInterval)) && !t.After(to) {
			h.mu.Unlock()
			return true
		}
	}
	h.mu.Unlock()
	for _, a := range h.agents {
		if a.name != node {
			continue
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		// A slow receiver delivers a request of the old process after the new one started:
		// arrival order is not sending order within an export's timeout.
		for _, p := range a.history {
			if p.started.After(from.Add(-15*time.Second)) && !p.started.After(to) {
				return true
			}
		}
	}
	return false
}

// exited is called when an agent process is gone: without a signal of the harness, a crash.
func (h *harness) exited(a *agent, p *process) {
	a.mu.Lock()
	why := p.signalled
	a.mu.Unlock()
	if why == "" {
		h.crash(a, p, "exited without a signal from the harness")
	}
}

func (h *harness) crash(a *agent, p *process, detail string) {
	h.mu.Lock()
	h.crashes = append(h.crashes, crashRecord{Node: a.name, PID: p.pid, At: p.exitedAt, Status: p.status, Detail: detail + "; see " + a.logPath()})
	h.mu.Unlock()
	h.check.Add("no_crash", &devstate.Violation{At: p.exitedAt, Node: a.name, Detail: fmt.Sprintf("PID %d: %s (%s)", p.pid, detail, p.status)})
	h.logf("CRASH %s PID %d: %s (%s)", a.name, p.pid, detail, p.status)
}

func (h *harness) successor(a *agent, got devstate.SuccessorResult, detail string) {
	h.mu.Lock()
	h.successors = append(h.successors, successorRecord{Node: a.name, At: time.Now(), Mode: a.crash, Result: string(got), Detail: detail})
	h.mu.Unlock()
	var v *devstate.Violation
	switch {
	case !hasEtcd(a) && string(got) != map[string]string{"adopt": "adopted", "restore": "restored"}[a.crash]:
		// Without a cluster budget a restore brings every original back: restore and adopt
		// look different whatever the crashed agent left, so anything else is wrong.
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: fmt.Sprintf("after-crash %s with its own budget, but the successor was seen %s", a.crash, got)}
	case a.crash == "adopt" && got == devstate.SuccessorRestored:
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: "after-crash adopt, but the successor put the original limits back"}
	case a.crash == "restore" && got == devstate.SuccessorAdopted:
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: "after-crash restore, but the successor left the crashed agent's limits"}
	}
	h.check.Add(devstate.KindSuccessor, v)
}

// leaveW is what the group keeps for a node once it left, which a restore stays within: the
// budget's floor per node, never below the node's GPUs' Σ minimums.
func (h *harness) leaveW(s *devstate.State) float64 {
	h.mu.Lock()
	f := h.floorNow
	h.mu.Unlock()
	if s != nil {
		f = max(f, s.SumMinW())
	}
	return f
}

func (h *harness) readState(a *agent) *devstate.State {
	s, err := devstate.Read(a.devPath)
	if err != nil {
		return nil
	}
	return s
}

func (h *harness) originals(a *agent) map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.defaults[a.name]
}

func (h *harness) alertFor(name string) time.Duration {
	s, ok := h.alertScaled[name]
	if !ok {
		return 0
	}
	_, after, _ := strings.Cut(s, "→ ")
	d, _ := time.ParseDuration(strings.TrimSpace(after))
	return d
}

func (h *harness) etcdURLs() string {
	var eps []string
	for _, a := range h.etcd.clients {
		eps = append(eps, "http://"+a)
	}
	return strings.Join(eps, ",")
}

func (h *harness) otlpOutageEnded(r *faultRecord, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.outages = append(h.outages, outageRecord{Kind: r.Kind, Ended: at})
}

func (h *harness) makeVeth() error {
	return run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", h.veth+"p")
}

// build compiles the agent and capstanctl once into the work directory.
func (h *harness) build() error {
	dir := filepath.Join(h.work, "bin")
	for _, c := range []string{"capstan", "capstanctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "./cmd/"+c)
		cmd.Dir = h.cfg.Repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_CFLAGS=-O2 -Wno-deprecated-declarations")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %w\n%s", c, err, out)
		}
	}
	h.bin = binaries{capstan: filepath.Join(dir, "capstan"), capstanctl: filepath.Join(dir, "capstanctl")}
	help, _ := exec.Command(h.bin.capstan, "--help").CombinedOutput()
	for _, f := range []string{"--gpu.sim.state-file", "--gpu.sim.fault-file"} {
		if !strings.Contains(string(help), f) {
			return fmt.Errorf("this capstan has no %s: the soak reads the sim's device state through it", f)
		}
	}
	return nil
}

// Run runs one soak and writes its report; the error says what failed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	h := &harness{cfg: cfg, group: "soak", skipped: map[string]string{}, reloads: map[string][]time.Time{},
		defaults: map[string]map[string]int64{}, alertObs: map[string][]alertSighting{}, busy: map[string]int{},
		ended: map[string]time.Time{},
		rng:   rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))}
	if err := os.MkdirAll(filepath.Join(cfg.Out, "logs"), 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "capstan-soak-")
	if err != nil {
		return nil, err
	}
	h.work = work
	defer func() { _ = os.RemoveAll(work) }()
	h.logf("building the agent and capstanctl")
	if err := h.build(); err != nil {
		return nil, err
	}
	// The etcd members run a copy of this binary: a rebuild of the original during a long run
	// must not change what a restarted member runs.
	self := filepath.Join(work, "bin", "soak")
	if err := copyFile(cfg.Self, self); err != nil {
		return nil, err
	}
	if err := os.Chmod(self, 0o755); err != nil {
		return nil, err
	}
	cfg.Self = self
	h.cfg.Self = self
	h.started = time.Now()
	end := h.started.Add(cfg.Duration)
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	// etcd: three members, each its own process.
	h.etcd, err = newEtcdCluster(cfg.Self, filepath.Join(work, "etcd"), filepath.Join(cfg.Out, "logs"), 3)
	if err != nil {
		return nil, err
	}
	h.logf("starting 3 etcd members")
	if err := h.etcd.startAll(); err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { h.etcd.stopAll(syscall.SIGTERM) })

	// The OTLP receiver behind the proxy.
	rcvAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	h.otlp, err = startOTLP(rcvAddr, h.restartedBetween)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, h.otlp.stop)
	h.otlpProxy, err = chaosproxy.NewHTTP("http://" + rcvAddr)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, h.otlpProxy.Close)

	// The group budget: half the GPUs' Σ max; every node's floor a little above its Σ min.
	// One node takes its budget from a file instead (fileBudgetNode).
	groupNodes := cfg.Agents - 1
	sumMax := float64(groupNodes*cfg.GPUs) * 700
	h.sumMinW = float64(groupNodes*cfg.GPUs) * 200
	h.baseBudgetW = 0.5 * sumMax
	h.floorW = float64(cfg.GPUs) * 220
	h.check = devstate.NewChecker(cfg.Settle, end) // the Σ check starts once the agents settled
	if err := h.setBudget(h.baseBudgetW, "soak: start"); err != nil {
		return nil, err
	}

	if os.Geteuid() == 0 {
		h.veth = fmt.Sprintf("csoak%d", os.Getpid()%100000)
		_ = run("ip", "link", "del", h.veth)
		if err := h.makeVeth(); err != nil {
			return nil, err
		}
		cleanups = append(cleanups, func() { _ = run("ip", "link", "del", h.veth) })
	}

	if err := h.makeAgents(&cleanups); err != nil {
		return nil, err
	}
	// The long-lived node starts last, so that another one is elected allocator.
	for i := len(h.agents) - 1; i >= 0; i-- {
		a := h.agents[i]
		h.logf("starting agent %s (%s)", a.name, a.addr)
		if _, err := a.start(ctx); err != nil {
			return nil, err
		}
		if s := h.readState(a); s != nil {
			d := map[string]int64{}
			for _, g := range s.GPUs {
				d[g.UUID] = g.DefaultMW
			}
			h.mu.Lock()
			h.defaults[a.name] = d
			h.mu.Unlock()
		}
	}
	cleanups = append(cleanups, func() {
		for _, a := range h.agents {
			if p := a.current(); p != nil {
				_ = p.cmd.Process.Kill()
			}
		}
	})

	// Prometheus, on the shipped rules with `for:` scaled to the run.
	rules := filepath.Join(work, "capstan-rules.yaml")
	h.alertScaled, err = scaleRules(filepath.Join(cfg.Repo, "deploy/prometheus/capstan-rules.yaml"), rules, cfg.AlertForScale, MinAlertFor)
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, a := range h.agents {
		targets = append(targets, a.addr)
	}
	promDir := filepath.Join(work, "prometheus")
	_ = os.MkdirAll(promDir, 0o755)
	h.prom, err = startPrometheus(cfg.Prometheus, promDir, rules, targets, time.Second)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() {
		h.prom.stop()
		_ = copyFile(filepath.Join(promDir, "prometheus.log"), filepath.Join(cfg.Out, "logs", "prometheus.log"))
	})

	mctx, stopMonitors := context.WithCancel(ctx)
	var monitors sync.WaitGroup
	h.startMonitors(mctx, &monitors)

	// Warm-up: the agents settle under their grants; then a quiet stretch without faults in
	// which no alert may fire; then the chaos; then a tail in which every fault has ended.
	warm := min(30*time.Second, cfg.Duration/10)
	quiet := min(30*time.Second, cfg.Duration/10)
	tail := min(40*time.Second, cfg.Duration/8)
	sleep(ctx, warm)
	chaosFrom := time.Now().Add(quiet)
	h.check = h.check.StartAt(time.Now())
	h.mu.Lock()
	h.quiet = [2]time.Time{time.Now(), chaosFrom}
	h.mu.Unlock()
	h.logf("quiet stretch until %s", chaosFrom.UTC().Format(time.RFC3339))
	h.runFaults(ctx, chaosFrom, end.Add(-tail))
	sleep(ctx, time.Until(end.Add(-tail/2)))

	// Before the agents stop: every dashboard panel's query against Prometheus.
	panels := h.checkPanels()
	h.checkAlerts()
	h.stopping.Store(true)
	var wg sync.WaitGroup
	for _, a := range h.agents {
		if a.current() != nil {
			wg.Go(func() { _ = a.stop("end of the soak", 30*time.Second) })
		}
	}
	wg.Wait()
	stopMonitors()
	monitors.Wait()
	rep := h.report(panels)
	if err := rep.write(cfg.Out); err != nil {
		return rep, err
	}
	if !rep.Pass {
		return rep, errors.New(rep.Summary())
	}
	return rep, nil
}

// makeAgents lays out each node: its directory, its fixture sysfs, its state-file tmpfs (when
// root), its etcd proxies, its flags.
func (h *harness) makeAgents(cleanups *[]func()) error {
	modes := [][2]string{{"restore", "restore"}, {"restore", "adopt"}, {"keep", "restore"}, {"keep", "adopt"}}
	traces := []string{"training", "bursty", "training", "steady"}
	for i := range h.cfg.Agents {
		name := fmt.Sprintf("node-%d", i)
		dir := filepath.Join(h.work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		a := &agent{h: h, name: name, dir: dir, addr: addr, onExit: modes[i%len(modes)][0], crash: modes[i%len(modes)][1],
			long: i == 0, devPath: filepath.Join(dir, "gpus.json"), stateDir: filepath.Join(dir, "state")}
		if err := os.MkdirAll(a.stateDir, 0o755); err != nil {
			return err
		}
		if os.Geteuid() == 0 {
			if err := run("mount", "-t", "tmpfs", "-o", "size=64k", "soak-state", a.stateDir); err != nil {
				return err
			}
			*cleanups = append(*cleanups, func() { _ = syscall.Unmount(a.stateDir, syscall.MNT_DETACH) })
		}
		a.sysfs = filepath.Join(dir, "sys")
		if err := h.serveSysfs(a, cleanups); err != nil {
			return err
		}
		var eps []string
		for _, c := range h.etcd.clients {
			if i == fileBudgetNode {
				break // no etcd for it
			}
			p, err := chaosproxy.NewTCP(c)
			if err != nil {
				return err
			}
			*cleanups = append(*cleanups, p.Close)
			a.etcd = append(a.etcd, p)
			eps = append(eps, "http://"+p.Addr())
		}
		if a.faults, err = newFaultFile(filepath.Join(dir, "faults.json")); err != nil {
			return err
		}
		a.args = []string{
			"--node.name=" + name, "--log.level=info",
			"--gpu.backend=sim", "--gpu.sim.model=H100", fmt.Sprintf("--gpu.sim.count=%d", h.cfg.GPUs),
			"--gpu.sim.trace=" + traces[i%len(traces)], fmt.Sprintf("--gpu.sim.seed=%d", h.cfg.Seed+uint64(i)),
			"--gpu.sim.state-file=" + a.devPath, "--gpu.sim.fault-file=" + a.faults.path,
			"--path.sysfs=" + a.sysfs, "--web.listen-address=" + addr,
			"--capping.enabled", "--capping.period=" + h.cfg.Period.String(), "--capping.state-file=" + a.stateFile(),
			"--capping.on-exit=" + a.onExit, "--capping.after-crash=" + a.crash,
			"--otlp.endpoint=http://" + h.otlpProxy.Addr(), "--otlp.protocol=http", "--otlp.interval=" + h.cfg.OTLPInterval.String(),
		}
		if i == fileBudgetNode {
			if err := h.makeFileBudget(a); err != nil {
				return err
			}
			a.args = append(a.args, "--budget.source=file", "--budget.file="+a.budgetFile)
		} else {
			a.args = append(a.args, "--budget.source=etcd", "--etcd.endpoints="+strings.Join(eps, ","), "--etcd.group="+h.group, "--etcd.lease-ttl=3s")
		}
		if h.veth != "" {
			a.args = append(a.args, "--nic.include=^"+h.veth+"p?$", "--nic.exclude=")
		}
		if a.long && os.Geteuid() == 0 {
			// One node attributes its energy to workloads (eBPF, as root), so that the
			// dashboard's workload panels are fed too.
			a.args = append(a.args, "--collector.workload")
		}
		h.agents = append(h.agents, a)
	}
	return nil
}

// serveSysfs gives the node its copy of the fixture sysfs tree, served through FUSE so that
// the sensor faults can fail its files' reads; without FUSE, a plain copy (and the sensor
// faults are skipped, with the reason).
func (h *harness) serveSysfs(a *agent, cleanups *[]func()) error {
	src := a.sysfs + ".src"
	if err := os.CopyFS(src, os.DirFS(hostfixtures.Sysfs(hostfixtures.Intel))); err != nil {
		return fmt.Errorf("copying the fixture sysfs: %w", err)
	}
	if h.noSensorTree == "" {
		if err := os.MkdirAll(a.sysfs, 0o755); err != nil {
			return err
		}
		t, err := mountSensorTree(src, a.sysfs)
		if err == nil {
			a.sensors = t
			*cleanups = append(*cleanups, func() {
				if err := t.unmount(); err != nil {
					h.logf("%v", err)
				}
			})
			return nil
		}
		h.noSensorTree = fmt.Sprintf("no FUSE to serve the sensor files from (%v); a fixture file swapped for a failing one is never read again, as the agent holds its sensor files open", err)
		h.logf("%s", h.noSensorTree)
		if err := os.Remove(a.sysfs); err != nil {
			return err
		}
	}
	return os.Rename(src, a.sysfs)
}

func copyFile(src, dst string) error {
	raw, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, raw, 0o644)
}

// sortedKeys lists a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
