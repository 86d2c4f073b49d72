package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capstan-power/capstan/internal/soak/chaosproxy"
	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// faultKind is one kind of fault the schedule injects.
type faultKind struct {
	name string
	// domain serialises faults that cannot overlap: "node" faults take one node, the others
	// take their shared part (etcd, otlp, budget, host).
	domain string
	// eligible, for node faults, says which nodes may take it (nil: every node).
	eligible func(a *agent) bool
	// alert is the alert this fault must make fire (on the faulted node's instance when the
	// fault has a node), "" when none is expected.
	alert string
	run   func(ctx context.Context, h *harness, a *agent, r *faultRecord) error
	// needsRoot: skipped with a reason when not root.
	needsRoot string
	// long faults (40 s or more) go first in the schedule's first pass.
	long bool
	// first, when set, picks the node of the kind's first injection, if one such node can
	// take it within a minute.
	first func(a *agent) bool
}

// faultRecord is one injected fault, as the report lists it.
type faultRecord struct {
	Kind     string    `json:"kind"`
	Node     string    `json:"node,omitempty"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Detail   string    `json:"detail,omitempty"`
	Error    string    `json:"error,omitempty"`
	Alert    string    `json:"expected_alert,omitempty"`
	Fired    *bool     `json:"alert_fired,omitempty"`
	instance string
}

func (r *faultRecord) note(format string, args ...any) {
	if r.Detail != "" {
		r.Detail += "; "
	}
	r.Detail += fmt.Sprintf(format, args...)
}

var codes = []string{"ERROR_UNKNOWN", "ERROR_TIMEOUT"}

// notLong keeps a fault off the node whose process lives the whole run.
func notLong(a *agent) bool { return !a.long }

func faultKinds() []faultKind {
	return []faultKind{
		{name: "nvml.error", domain: "node", alert: "CapstanCappingFailsafe", run: nvmlError},
		{name: "nvml.hang", domain: "node", alert: "CapstanCollectorDown", run: nvmlHang, long: true},
		{name: "nvml.gpu-lost", domain: "node", alert: "CapstanGPULost", run: gpuLost},
		{name: "nvml.limit-out-of-band", domain: "node", alert: "CapstanPowerLimitOverridden", run: outOfBand},
		{name: "nvml.write-refused", domain: "node", alert: "CapstanNodeOverBudget", run: writeRefused},
		{name: "nvml.driver-reload", domain: "node", run: driverReload},
		{name: "nvml.mig-reconfigure", domain: "node", run: migReconfigure},
		{name: "nvml.nvlink-errors", domain: "node", run: nvlinkErrors},
		{name: "host.sensor-eio", domain: "node", run: sensorFault(syscall.EIO)},
		{name: "host.sensor-enodata", domain: "node", run: sensorFault(syscall.ENODATA)},
		{name: "host.nic-recreate", domain: "host", run: nicRecreate, needsRoot: "creating and deleting a network link needs root"},
		{name: "otlp.down", domain: "otlp", run: otlpFault(chaosproxy.Down, 0), long: true},
		{name: "otlp.slow", domain: "otlp", run: otlpFault(chaosproxy.Slow, 5*time.Second), long: true},
		{name: "otlp.refuse-503", domain: "otlp", run: otlpFault(chaosproxy.Refuse, 0), long: true},
		{name: "etcd.leader-kill", domain: "etcd", run: etcdLeaderKill},
		{name: "etcd.member-restart", domain: "etcd", run: etcdMemberRestart},
		{name: "etcd.cluster-down", domain: "etcd", run: etcdClusterDown, long: true},
		{name: "etcd.partition", domain: "node", eligible: hasEtcd, alert: "CapstanGrantStale", run: etcdPartition},
		// The first kill mid-write goes to the node with its own budget, where the successor's
		// restore and adoption look different.
		{name: "agent.sigkill-mid-write", domain: "node", eligible: notLong, first: func(a *agent) bool { return !hasEtcd(a) }, run: killMidWrite},
		{name: "agent.sigkill-allocator", domain: "node", alert: "CapstanAgentDown", run: killAllocator, long: true},
		{name: "agent.sigterm-restart", domain: "node", eligible: notLong, run: termRestart},
		{name: "agent.sighup-storm", domain: "node", run: hupStorm},
		{name: "agent.disk-full", domain: "node", eligible: notLong, run: diskFull, needsRoot: "a tiny tmpfs for the state file needs root"},
		{name: "agent.stderr-closed", domain: "node", eligible: notLong, run: stderrClosed},
		{name: "budget.cut-raise", domain: "budget", run: budgetCutRaise},
		{name: "budget.below-minimums", domain: "budget", run: budgetBelowMinimums},
		{name: "budget.file-below-minimums", domain: "node", eligible: func(a *agent) bool { return !hasEtcd(a) }, alert: "CapstanNodeOverBudget", run: fileBudgetBelowMinimums},
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (h *harness) randGPU() int {
	h.rngMu.Lock()
	defer h.rngMu.Unlock()
	return h.rng.IntN(h.cfg.GPUs)
}

func (h *harness) pick(s []string) string {
	h.rngMu.Lock()
	defer h.rngMu.Unlock()
	return s[h.rng.IntN(len(s))]
}

// simFaultFor puts f in a's fault file for d, then takes it out again.
func simFaultFor(ctx context.Context, a *agent, f simFault, d time.Duration) error {
	until := time.Now().Add(d)
	id, err := a.faults.add(f, until)
	if err != nil {
		return err
	}
	sleep(ctx, time.Until(until))
	return a.faults.remove(id)
}

func nvmlError(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	code := h.pick(codes)
	// Every power reading fails: the controller loses its measurement and goes to failsafe,
	// for longer than CapstanCappingFailsafe's `for`.
	d := max(25*time.Second, h.alertFor("CapstanCappingFailsafe")+15*time.Second)
	r.note("GetPowerUsage and GetFieldValues of every GPU answer %s for %v", code, d)
	return simFaultFor(ctx, a, simFault{Kind: "error", GPU: -1, Calls: []string{"GetPowerUsage", "GetFieldValues"}, Code: code}, d)
}

func nvmlHang(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	// Every GPU: one that an earlier fault left lost to the collector would not be called.
	gpu := -1
	r.note("every NVML call of every GPU hangs 30 s, for 45 s")
	start := time.Now()
	// A hung call blocks the controller's writes too: the Σ check waits for it.
	h.check.Excuse(a.name, start, start.Add(45*time.Second+30*time.Second))
	err := simFaultFor(ctx, a, simFault{Kind: "hang", GPU: gpu, Calls: []string{"*"}, Duration: "30s"}, 45*time.Second)
	// The last hung call returns up to 30 s after the fault is gone.
	sleep(ctx, 31*time.Second)
	return err
}

func gpuLost(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	gpu := h.randGPU()
	r.note("GPU %d lost for 20 s, back at its default limit", gpu)
	start := time.Now()
	h.check.Excuse(a.name, start, start.Add(20*time.Second))
	return simFaultFor(ctx, a, simFault{Kind: "lost", GPU: gpu}, 20*time.Second)
}

func outOfBand(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	gpu := h.randGPU()
	s := h.readState(a)
	if s == nil || gpu >= len(s.GPUs) {
		return errors.New("no device state to pick an out-of-band limit from")
	}
	g := s.GPUs[gpu]
	// Someone raises the limit to the GPU's maximum behind the agent's back.
	r.note("GPU %d's limit set to %d mW out of band (was %d mW)", gpu, g.MaxMW, g.LimitMW)
	start := time.Now()
	h.check.Excuse(a.name, start, start.Add(2*time.Second))
	id, err := a.faults.add(simFault{Kind: "set-limit", GPU: gpu, LimitMW: g.MaxMW}, time.Time{})
	if err != nil {
		return err
	}
	sleep(ctx, 10*time.Second)
	return a.faults.remove(id)
}

func writeRefused(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	// A driver reload puts every limit back at its default while the agent may not write:
	// the node draws above its grant and cannot help it, which CapstanNodeOverBudget reports.
	hold := h.alertFor("CapstanNodeOverBudget") + 15*time.Second
	r.note("every limit write refused with ERROR_NO_PERMISSION for %v, after a driver reload", hold)
	start := time.Now()
	h.check.Excuse(a.name, start, start.Add(hold))
	until := start.Add(hold)
	refuse, err := a.faults.add(simFault{Kind: "refuse-writes", GPU: -1, Code: "ERROR_NO_PERMISSION"}, until)
	if err != nil {
		return err
	}
	sleep(ctx, 300*time.Millisecond)
	reload, err := a.faults.add(simFault{Kind: "reload", GPU: -1}, time.Time{})
	if err != nil {
		return err
	}
	// The alert says "measured above budget": it is owed only if the node's draw (the device
	// state) stayed above its grant (etcd) for the alert's `for` — a group with headroom may
	// grant the node what it now draws.
	need := h.alertFor("CapstanNodeOverBudget") + 5*time.Second
	var over, longest time.Duration
	for time.Now().Before(until) && ctx.Err() == nil {
		s, grant := h.readState(a), h.grantOf(a)
		if s != nil && grant > 0 && s.SumPowerW() > grant+devstate.ToleranceW {
			over += 500 * time.Millisecond
			longest = max(longest, over)
		} else {
			over = 0
		}
		sleep(ctx, 500*time.Millisecond)
	}
	if longest < need {
		r.note("the node's draw stayed above its grant for %v at most, less than %v: CapstanNodeOverBudget not owed", longest, need)
		r.Alert = ""
	} else {
		r.note("the node's draw stayed above its grant for %v", longest)
	}
	_ = a.faults.remove(reload)
	return a.faults.remove(refuse)
}

// grantW reads a node's grant from etcd (0 when unknown).
func (h *harness) grantW(node string) float64 {
	cli, err := h.etcd.client()
	if err != nil {
		return 0
	}
	defer func() { _ = cli.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/capstan/v1/groups/"+h.group+"/grants/"+node)
	if err != nil || len(resp.Kvs) == 0 {
		return 0
	}
	var g struct {
		Watts float64 `json:"watts"`
	}
	if json.Unmarshal(resp.Kvs[0].Value, &g) != nil {
		return 0
	}
	return g.Watts
}

func driverReload(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	r.note("driver reload: every GPU's limit back at its default")
	start := time.Now()
	h.check.Excuse(a.name, start, start.Add(2*time.Second))
	id, err := a.faults.add(simFault{Kind: "reload", GPU: -1}, time.Time{})
	if err != nil {
		return err
	}
	sleep(ctx, 5*time.Second)
	return a.faults.remove(id)
}

func nicRecreate(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	if err := run("ip", "link", "del", h.veth); err != nil {
		return err
	}
	r.note("%s deleted for 5 s, then created again", h.veth)
	sleep(ctx, 5*time.Second)
	return h.makeVeth()
}

func otlpFault(mode chaosproxy.HTTPMode, delay time.Duration) func(context.Context, *harness, *agent, *faultRecord) error {
	return func(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
		r.note("OTLP endpoint %s for 30 s", mode)
		if err := h.otlpProxy.Set(mode, delay); err != nil {
			return err
		}
		sleep(ctx, 30*time.Second)
		err := h.otlpProxy.Set(chaosproxy.Pass, 0)
		h.otlpOutageEnded(r, time.Now())
		// The next OTLP fault waits until this one's recovery could be seen.
		sleep(ctx, 3*h.cfg.OTLPInterval)
		return err
	}
}

func etcdLeaderKill(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	l := h.etcd.leader()
	if l < 0 {
		return errors.New("no etcd leader to kill")
	}
	killed := time.Now()
	h.etcd.stop(l, syscall.SIGKILL)
	for time.Since(killed) < 30*time.Second && h.etcd.leader() < 0 {
		sleep(ctx, 100*time.Millisecond)
	}
	r.note("leader %s SIGKILLed; new leader after %.1f s", h.etcd.names[l], time.Since(killed).Seconds())
	sleep(ctx, 5*time.Second)
	if err := h.etcd.start(l); err != nil {
		return err
	}
	return h.etcd.waitHealthy(60 * time.Second)
}

func etcdMemberRestart(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	l := h.etcd.leader()
	var others []int
	for i := range h.etcd.names {
		if i != l {
			others = append(others, i)
		}
	}
	h.rngMu.Lock()
	m := others[h.rng.IntN(len(others))]
	h.rngMu.Unlock()
	h.etcd.stop(m, syscall.SIGTERM)
	r.note("member %s stopped for 3 s and started again", h.etcd.names[m])
	sleep(ctx, 3*time.Second)
	if err := h.etcd.start(m); err != nil {
		return err
	}
	return h.etcd.waitHealthy(60 * time.Second)
}

func etcdClusterDown(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	h.etcd.stopAll(syscall.SIGKILL)
	r.note("every member SIGKILLed; the cluster down for 30 s")
	sleep(ctx, 30*time.Second)
	return h.etcd.startAll()
}

func etcdPartition(ctx context.Context, _ *harness, a *agent, r *faultRecord) error {
	for _, p := range a.etcd {
		p.Blackhole(true)
	}
	r.note("the node's etcd links blackholed for 30 s")
	sleep(ctx, 30*time.Second)
	for _, p := range a.etcd {
		p.Blackhole(false)
	}
	return nil
}

func killMidWrite(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	// Kill the moment a limit write shows in the device state: the controller writes its GPUs
	// one after the other, so this lands between two writes of one period.
	last := h.readState(a)
	deadline := time.Now().Add(30 * time.Second)
	seen := false
	for time.Now().Before(deadline) && !seen {
		s := h.readState(a)
		if s != nil && last != nil {
			prev := last.ByUUID()
			for _, g := range s.GPUs {
				if p, ok := prev[g.UUID]; ok && g.LimitMW != p.LimitMW && g.LimitWriter == "nvml" {
					seen = true
				}
			}
		}
		if s != nil {
			last = s
		}
		// Often enough to land between two GPUs' writes of one period, seldom enough that
		// the harness does not take the CPU the agents' /metrics latency is measured on.
		time.Sleep(10 * time.Millisecond)
	}
	_, crashed, err := a.kill(r.Kind)
	if err != nil {
		return err
	}
	if seen {
		r.note("SIGKILL right after a limit write")
	} else {
		r.note("SIGKILL (no limit write seen in 30 s)")
	}
	sleep(ctx, 2*time.Second)
	return a.restartAfterKill(ctx, crashed)
}

func killAllocator(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	_, crashed, err := a.kill(r.Kind)
	if err != nil {
		return err
	}
	// Down long enough for CapstanAgentDown to fire (its `for`, scaled, plus a scrape).
	down := h.alertFor("CapstanAgentDown") + 10*time.Second
	r.note("the elected allocator SIGKILLed, down for %v", down)
	sleep(ctx, down)
	return a.restartAfterKill(ctx, crashed)
}

func termRestart(ctx context.Context, _ *harness, a *agent, r *faultRecord) error {
	if err := a.stop(r.Kind, 30*time.Second); err != nil {
		return err
	}
	r.note("SIGTERM, limits checked after exit, started again after 1 s")
	sleep(ctx, time.Second)
	_, err := a.start(ctx)
	return err
}

func hupStorm(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	n := 10
	for range n {
		if _, err := a.signal(syscall.SIGHUP, ""); err != nil {
			return err
		}
		h.reloaded(a.name)
		h.rngMu.Lock()
		gap := time.Duration(100+h.rng.IntN(200)) * time.Millisecond
		h.rngMu.Unlock()
		sleep(ctx, gap)
	}
	r.note("%d SIGHUPs 100–300 ms apart", n)
	sleep(ctx, 5*time.Second)
	if a.current() == nil {
		return errors.New("the agent did not survive the reload storm")
	}
	return nil
}

func diskFull(ctx context.Context, h *harness, a *agent, r *faultRecord) error {
	filler := filepath.Join(a.stateDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	_ = f.Close()
	defer func() { _ = os.Remove(filler) }()
	// A reload hands the state file over (marks it clean): on a full disk that fails, and
	// when neither the new nor the previous configuration can start again the agent applies
	// capping.on-exit and exits with the error (docs/capping.md). Either way out is allowed;
	// the limits it leaves are checked like a SIGTERM's.
	before := h.readState(a)
	p, err := a.signal(syscall.SIGHUP, "SIGHUP on a full state disk")
	if err != nil {
		return err
	}
	h.reloaded(a.name)
	select {
	case <-p.done:
		a.checkExit(p, before, true)
		r.note("the state file's tmpfs full; SIGHUP: the agent applied on-exit and exited (%s); freed and started again", p.status)
	case <-time.After(8 * time.Second):
		a.mu.Lock()
		p.signalled = ""
		a.mu.Unlock()
		r.note("the state file's tmpfs full; SIGHUP (the agent kept running), then SIGTERM; freed and started again")
		if err := a.stopAllowingError(r.Kind, 30*time.Second); err != nil {
			return err
		}
	}
	_ = os.Remove(filler)
	_, err = a.start(ctx)
	return err
}

func stderrClosed(ctx context.Context, _ *harness, a *agent, r *faultRecord) error {
	p := a.current()
	if p == nil {
		return errors.New("not running")
	}
	_ = p.stderr.Close()
	r.note("the agent's stderr reader closed; 15 s later SIGTERM (limits checked), started again")
	sleep(ctx, 15*time.Second)
	if a.current() != p {
		return errors.New("the agent did not survive its stderr being closed")
	}
	if err := a.stop(r.Kind, 30*time.Second); err != nil {
		return err
	}
	_, err := a.start(ctx)
	return err
}

func budgetCutRaise(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	cut := h.baseBudgetW * 0.7
	if err := h.setBudget(cut, "soak: cut"); err != nil {
		return err
	}
	r.note("group budget cut %.0f → %.0f W for 20 s, then raised back", h.baseBudgetW, cut)
	sleep(ctx, 20*time.Second)
	return h.setBudget(h.baseBudgetW, "soak: raise")
}

func budgetBelowMinimums(ctx context.Context, h *harness, _ *agent, r *faultRecord) error {
	// capstanctl refuses a budget below what the nodes need; an operator writing the key by
	// hand (etcdctl put) is not stopped, and the nodes must hold at their floors.
	low := h.sumMinW * 0.9
	if err := h.putBudgetKey(low, "soak: below the GPUs' minimums, written by hand"); err != nil {
		return err
	}
	hold := h.alertFor("CapstanNodeOverBudget") + 15*time.Second
	r.note("group budget key set to %.0f W by hand, below the GPUs' Σ minimums %.0f W and the nodes' floors, for %v", low, h.sumMinW, hold)
	sleep(ctx, hold)
	return h.setBudget(h.baseBudgetW, "soak: back")
}

// putBudgetKey writes the group's budget record straight into etcd, as etcdctl would.
func (h *harness) putBudgetKey(w float64, reason string) error {
	cli, err := h.etcd.client()
	if err != nil {
		return err
	}
	defer func() { _ = cli.Close() }()
	// The floor stays: a floor changed while a node is cut off from etcd is another matter (the
	// node drops to the floor it knew).
	raw, err := json.Marshal(map[string]any{"watts": w, "floor_per_node_w": h.floorW, "set_by": "soak", "set_at": time.Now().UTC(), "reason": reason})
	if err != nil {
		return err
	}
	// An etcd fault may be in flight: retry as an operator would.
	err = retry(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := cli.Put(ctx, "/capstan/v1/groups/"+h.group+"/budget", string(raw))
		return err
	})
	if err != nil {
		return fmt.Errorf("writing the budget key: %w", err)
	}
	h.check.SetBudget(time.Now(), w, h.floorW)
	h.mu.Lock()
	h.budgetNow, h.floorNow = w, h.floorW
	h.mu.Unlock()
	return nil
}

// setBudget sets the group budget with the real capstanctl and tells the checker.
func (h *harness) setBudget(w float64, reason string) error {
	// An etcd fault may be in flight: retry as an operator would.
	err := retry(func() error {
		cmd := exec.Command(h.bin.capstanctl, "--etcd.endpoints="+h.etcdURLs(), "--timeout=5s", "budget", "set", h.group,
			fmt.Sprintf("%.0f", w), fmt.Sprintf("--floor-per-node=%.0f", h.floorW), "--reason="+reason)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("capstanctl budget set %.0f: %w: %s", w, err, out)
		}
		return nil
	})
	if err != nil {
		return err
	}
	h.check.SetBudget(time.Now(), w, h.floorW)
	h.mu.Lock()
	h.budgetNow, h.floorNow = w, h.floorW
	h.mu.Unlock()
	return nil
}

// retry calls f until it succeeds, for up to a minute (an etcd cluster healing).
func retry(f func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Second)
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// errSkip marks a fault that cannot be injected on this machine, with why.
type errSkip string

func (e errSkip) Error() string { return string(e) }

// allocator returns the node whose agent says it is the elected allocator, or nil.
func (h *harness) allocator() *agent {
	client := &http.Client{Timeout: 2 * time.Second}
	for _, a := range h.agents {
		if a.current() == nil {
			continue
		}
		page, _ := scrape(client, a.addr)
		for line := range strings.SplitSeq(page, "\n") {
			if strings.HasPrefix(line, "capstan_cluster_allocator") && strings.HasSuffix(strings.TrimSpace(line), " 1") {
				return a
			}
		}
	}
	return nil
}

// scheduler runs the faults: every kind once in a seeded random order spread over the chaos
// window, then (in a long run) kinds drawn at random every FaultEvery.
type scheduler struct {
	h     *harness
	locks map[string]*sync.Mutex
	wg    sync.WaitGroup
	// picked counts the nodes picked per kind.
	mu     sync.Mutex
	picked map[string]int
}

func (h *harness) runFaults(ctx context.Context, from, until time.Time) {
	s := &scheduler{h: h, locks: map[string]*sync.Mutex{}, picked: map[string]int{}}
	for _, k := range []string{"etcd", "otlp", "budget", "host"} {
		s.locks[k] = &sync.Mutex{}
	}
	for _, a := range h.agents {
		s.locks["node:"+a.name] = &sync.Mutex{}
	}
	kinds := faultKinds()
	var runnable []faultKind
	for _, k := range kinds {
		if k.needsRoot != "" && os.Geteuid() != 0 {
			h.skip(k.name, k.needsRoot)
			continue
		}
		runnable = append(runnable, k)
	}
	h.rngMu.Lock()
	h.rng.Shuffle(len(runnable), func(i, j int) { runnable[i], runnable[j] = runnable[j], runnable[i] })
	h.rngMu.Unlock()
	// The first pass: every kind once, evenly spread, the long ones first so that each still
	// ends in the window.
	// The allocator kill goes first of all: the long-lived node starts last and is not the
	// allocator yet (an etcd outage may elect it later).
	sort.SliceStable(runnable, func(i, j int) bool {
		first := func(k faultKind) int {
			switch {
			case k.name == "agent.sigkill-allocator":
				return 0
			case k.long:
				return 1
			}
			return 2
		}
		return first(runnable[i]) < first(runnable[j])
	})
	spacing := min(max((until.Sub(from)-time.Minute)/time.Duration(len(runnable)), 2*time.Second), h.cfg.FaultEvery)
	at := from
	for _, k := range runnable {
		s.start(ctx, k, at, until)
		at = at.Add(spacing)
	}
	// Then more at random while there is time (hours-long runs).
	for {
		at = at.Add(h.cfg.FaultEvery)
		if at.Add(90 * time.Second).After(until) {
			break
		}
		h.rngMu.Lock()
		k := runnable[h.rng.IntN(len(runnable))]
		h.rngMu.Unlock()
		s.start(ctx, k, at, until)
	}
	s.wg.Wait()
}

func (s *scheduler) start(ctx context.Context, k faultKind, at, until time.Time) {
	s.wg.Go(func() {
		sleep(ctx, time.Until(at))
		if ctx.Err() != nil {
			return
		}
		var lock *sync.Mutex
		var target *agent
		if k.domain == "node" {
			target, lock = s.nodeFor(ctx, k, until)
			if target == nil {
				s.h.skip(k.name, "no node free for it before the chaos window ended")
				return
			}
		} else {
			lock = s.locks[k.domain]
			lock.Lock()
		}
		defer lock.Unlock()
		r := &faultRecord{Kind: k.name, Start: time.Now(), Alert: k.alert}
		busy := k.domain
		if target != nil {
			r.Node, r.instance = target.name, target.addr
			busy = "node:" + target.name
		}
		s.h.inFlight(busy, 1)
		defer s.h.inFlight(busy, -1)
		s.h.logf("fault %s %s", k.name, r.Node)
		err := k.run(ctx, s.h, target, r)
		r.End = time.Now()
		var skip errSkip
		switch {
		case errors.As(err, &skip):
			s.h.skip(k.name, string(skip))
			return
		case err != nil:
			r.Error = err.Error()
			s.h.logf("fault %s %s: %v", k.name, r.Node, err)
			// An agent that does not start again, an etcd cluster that does not heal: the run
			// cannot vouch for what followed.
			s.h.check.Add("fault_completed", &devstate.Violation{At: r.End, Node: r.Node, Detail: k.name + ": " + err.Error()})
		default:
			s.h.check.Add("fault_completed", nil)
		}
		s.h.recordFault(r)
	})
}

// nodeFor takes a free node that may take k: the allocator for the allocator kill, a random
// eligible one otherwise.
func (s *scheduler) nodeFor(ctx context.Context, k faultKind, until time.Time) (*agent, *sync.Mutex) {
	s.mu.Lock()
	first := k.first != nil && s.picked[k.name] == 0
	s.picked[k.name]++
	s.mu.Unlock()
	firstUntil := time.Now().Add(time.Minute)
	for ctx.Err() == nil && time.Now().Before(until) {
		var cands []*agent
		if k.name == "agent.sigkill-allocator" {
			// The long-lived node is spared even while it is the allocator (an etcd outage
			// may elect it): its RSS and goroutines over the whole run are what the flatness
			// checks read. The kill waits for another allocator.
			if a := s.h.allocator(); a != nil && notLong(a) {
				cands = append(cands, a)
			}
		} else {
			for _, a := range s.h.agents {
				if first && time.Now().Before(firstUntil) && !k.first(a) {
					continue
				}
				if (k.eligible == nil || k.eligible(a)) && a.current() != nil {
					cands = append(cands, a)
				}
			}
		}
		s.h.rngMu.Lock()
		s.h.rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
		s.h.rngMu.Unlock()
		for _, a := range cands {
			l := s.locks["node:"+a.name]
			if l.TryLock() {
				if a.current() != nil {
					return a, l
				}
				l.Unlock()
			}
		}
		sleep(ctx, 250*time.Millisecond)
	}
	return nil, nil
}
