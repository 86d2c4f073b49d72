package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capstan-power/capstan/internal/soak/chaosproxy"
	"github.com/capstan-power/capstan/internal/soak/devstate"
)

// agent is one capstan process slot: a node whose process the harness starts, signals and
// starts again. Its GPUs (the sim's device-state file) outlive every process.
type agent struct {
	h        *harness
	name     string
	dir      string // device-state and fault files, logs
	addr     string // web listen address, the same for every process of the node
	stateDir string // the capping state file's directory (a tiny tmpfs when root)
	sysfs    string // this node's copy of the fixture sysfs tree
	onExit   string // restore or keep
	crash    string // after-crash: restore or adopt
	// sensors serves sysfs through FUSE, so that its sensors can fail (nil without FUSE).
	sensors *sensorTree
	// budgetFile is the node's own budget file ("" for a node of the group, budget from etcd);
	// budgetW what it holds (under mu).
	budgetFile string
	budgetW    float64
	// long is the node kept running for the whole run (RSS and goroutines are measured on it).
	long    bool
	etcd    []*chaosproxy.TCP
	faults  *faultFile
	args    []string
	devPath string

	mu      sync.Mutex
	proc    *process
	history []*process
}

// process is one run of the agent binary.
type process struct {
	cmd      *exec.Cmd
	pid      int
	started  time.Time
	ready    time.Time
	stderr   *os.File // the harness's read end of the agent's stderr
	done     chan struct{}
	exitedAt time.Time
	status   string
	// signalled is set before the harness signals the process: an exit without it is a crash.
	signalled string
	stats     []procStat
}

type procStat struct {
	At         time.Time `json:"at"`
	RSSBytes   int64     `json:"rss_bytes"`
	Goroutines int       `json:"goroutines"`
	// Steady: no fault of the node's own and no etcd fault in flight.
	Steady bool `json:"steady"`
}

func (a *agent) stateFile() string { return filepath.Join(a.stateDir, "capping-state.json") }

func (a *agent) logPath() string { return filepath.Join(a.h.cfg.Out, "logs", a.name+".log") }

// start starts a new process of the node and waits until it is ready.
func (a *agent) start(ctx context.Context) (*process, error) {
	log, err := os.OpenFile(a.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer func() { _ = log.Close() }()
	fmt.Fprintf(log, "\n==== soak: starting %s at %s\n", a.name, time.Now().UTC().Format(time.RFC3339Nano))
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(a.h.bin.capstan, a.args...)
	cmd.Stdout = log
	cmd.Stderr = pw
	// Its own process group: a Ctrl-C of the harness reaches the harness, which stops the
	// agents itself (and checks their exit).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = pr.Close()
		_ = pw.Close()
		return nil, fmt.Errorf("starting agent %s: %w", a.name, err)
	}
	_ = pw.Close()
	p := &process{cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), stderr: pr, done: make(chan struct{})}
	logCopy, _ := os.OpenFile(a.logPath(), os.O_WRONLY|os.O_APPEND, 0o644)
	go func() {
		// The agent's stderr, line by line into its log, until the harness closes its end.
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			_, _ = logCopy.Write(append(sc.Bytes(), '\n'))
		}
		_ = logCopy.Close()
	}()
	go func() {
		err := cmd.Wait()
		p.exitedAt = time.Now()
		p.status = exitStatus(err)
		close(p.done)
		a.h.exited(a, p)
	}()
	a.mu.Lock()
	a.proc = p
	a.history = append(a.history, p)
	a.mu.Unlock()
	if err := a.waitReady(ctx, p, 60*time.Second); err != nil {
		return p, err
	}
	return p, nil
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	}
	return err.Error()
}

func (a *agent) waitReady(ctx context.Context, p *process, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("agent %s exited during start-up (%s); see %s", a.name, p.status, a.logPath())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := client.Get("http://" + a.addr + "/readyz")
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			a.mu.Lock()
			p.ready = time.Now()
			a.mu.Unlock()
			return nil
		}
	}
	return fmt.Errorf("agent %s not ready after %v; see %s", a.name, limit, a.logPath())
}

// readyAt is when p first answered /readyz (zero before).
func (a *agent) readyAt(p *process) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return p.ready
}

// current is the running process, nil between a stop and the next start.
func (a *agent) current() *process {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.proc == nil {
		return nil
	}
	select {
	case <-a.proc.done:
		return nil
	default:
		return a.proc
	}
}

// signal sends sig to the running process; with a reason, the exit it may cause is the
// harness's doing, not a crash.
func (a *agent) signal(sig syscall.Signal, why string) (*process, error) {
	p := a.current()
	if p == nil {
		return nil, fmt.Errorf("agent %s is not running", a.name)
	}
	if why != "" {
		a.mu.Lock()
		p.signalled = why
		a.mu.Unlock()
	}
	return p, p.cmd.Process.Signal(sig)
}

// stop sends SIGTERM and checks what the node's GPUs hold once the process is gone; a
// non-zero exit status counts as a crash.
func (a *agent) stop(why string, wait time.Duration) error { return a.terminate(why, wait, false) }

// stopAllowingError is stop where a failing exit is expected (a full state disk).
func (a *agent) stopAllowingError(why string, wait time.Duration) error {
	return a.terminate(why, wait, true)
}

func (a *agent) terminate(why string, wait time.Duration, errorOK bool) error {
	before := a.h.readState(a)
	p, err := a.signal(syscall.SIGTERM, why)
	if err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		<-p.done
		a.h.check.Add(devstate.KindExit, &devstate.Violation{At: time.Now(), Node: a.name,
			Detail: fmt.Sprintf("no exit %v after SIGTERM (%s); killed", wait, why)})
		return nil
	}
	a.checkExit(p, before, errorOK)
	return nil
}

// checkExit checks the limits a process left once it is gone, before being the last state read
// before it was signalled.
func (a *agent) checkExit(p *process, before *devstate.State, errorOK bool) {
	after := a.h.readState(a)
	var v *devstate.Violation
	if why := devstate.CheckExit(a.onExit, a.h.originals(a), before, after, a.leaveW(after)); why != "" {
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: why + " (" + p.status + ")"}
	} else if after != nil && after.PID != p.pid {
		v = &devstate.Violation{At: time.Now(), Node: a.name, Detail: fmt.Sprintf("the device state after exit was written by PID %d, not the agent's %d", after.PID, p.pid)}
	}
	a.h.check.Add(devstate.KindExit, v)
	if p.status != "exit 0" && !errorOK {
		a.h.crash(a, p, "exit status after SIGTERM: "+p.status)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (a *agent) kill(why string) (*process, *devstate.State, error) {
	p, err := a.signal(syscall.SIGKILL, why)
	crashed := a.h.readState(a)
	if err != nil {
		return nil, nil, err
	}
	<-p.done
	return p, crashed, nil
}

// restartAfterKill starts the successor of a SIGKILLed process and classifies what it did
// with the held limits in its first moments.
func (a *agent) restartAfterKill(ctx context.Context, crashed *devstate.State) error {
	startAt := time.Now()
	// The window a restore must show in: up to the end of the successor's first control
	// period after it became ready.
	watch, window := 4*time.Second, a.h.cfg.Period
	if !hasEtcd(a) {
		// The sim's device-state file coalesces writes: a restore followed at once by the
		// first period's writes (a few milliseconds later) would never show in it. Limit
		// writes slowed to slowWrite each while the successor starts make every step show
		// (the writes of the restore and of the first period take that much longer).
		const slowWrite = 300 * time.Millisecond
		slowFor := time.Duration(2*a.h.cfg.GPUs) * slowWrite
		watch, window = watch+slowFor, window+slowFor
		id, err := a.faults.add(simFault{Kind: "hang", GPU: -1, Calls: []string{"SetPowerManagementLimit"}, Duration: slowWrite.String()}, startAt.Add(watch))
		if err != nil {
			return err
		}
		defer func() { _ = a.faults.remove(id) }()
		// Without a cluster budget a restore puts every original back, above the node's own
		// budget until the successor's first control period caps again.
		a.h.check.Excuse(a.name, startAt, startAt.Add(watch))
	}
	early := make(chan []*devstate.State, 1)
	go func() {
		// Watch the device state closely while the successor starts: its restore (or not)
		// comes before its first control period.
		var seen []*devstate.State
		for time.Since(startAt) < watch {
			if s := a.h.readState(a); s != nil && s.WrittenAt.After(startAt) {
				seen = append(seen, s)
			}
			time.Sleep(20 * time.Millisecond)
		}
		early <- seen
	}()
	p, err := a.start(ctx)
	states := <-early
	var within []*devstate.State
	for _, s := range states {
		if p != nil && !a.readyAt(p).IsZero() && s.WrittenAt.After(a.readyAt(p).Add(window)) {
			break
		}
		within = append(within, s)
	}
	got := devstate.ClassifySuccessor(a.h.originals(a), crashed, within, a.leaveW(crashed))
	detail := "crashed with " + limitsW(crashed)
	if len(within) > 0 {
		detail += fmt.Sprintf("; successor's first %s, last %s (%d states)", limitsW(within[0]), limitsW(within[len(within)-1]), len(within))
	}
	a.h.successor(a, got, detail)
	return err
}

// limitsW lists a state's limits in watts.
func limitsW(s *devstate.State) string {
	if s == nil {
		return "no state"
	}
	var parts []string
	for _, g := range s.GPUs {
		parts = append(parts, strconv.FormatInt(g.LimitMW/1000, 10))
	}
	return "[" + strings.Join(parts, " ") + "] W"
}

// sample records the process's RSS (from /proc) and goroutines (go_goroutines of /metrics).
func (a *agent) sample(now time.Time, goroutines int) {
	p := a.current()
	if p == nil {
		return
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return
	}
	var rss int64
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb * 1024
		}
	}
	a.mu.Lock()
	p.stats = append(p.stats, procStat{At: now, RSSBytes: rss, Goroutines: goroutines, Steady: a.h.steady(a.name)})
	a.mu.Unlock()
}
