package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/testkit"
)

// Power safety must not depend on stderr, nor on the goroutine that fails: every way out that a
// process can catch puts the GPUs' original limits back before the process is gone. A restore
// that completes removes the state file; one that did not happen leaves it with "clean": false.

// exitStatus waits for cmd and returns its exit code, or 128+signal when a signal killed it.
func exitStatus(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("waiting for the agent: %v", err)
	}
	return 0
}

// assertRestored fails unless the state file is gone, which Stop does only after writing back
// every original limit.
func assertRestored(t *testing.T, state, logs string) {
	t.Helper()
	if data, err := os.ReadFile(state); err == nil {
		t.Errorf("the limits were not restored: state file left behind: %s; logs:\n%s", data, logs)
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// exited reports, without blocking, whether the process is gone (a zombie counts).
func exited(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// `capstan … 2>&1 | tee log` and Ctrl-C: tee dies first, and the agent must neither die of
// SIGPIPE at its next log line nor stop because of it; it keeps capping (a reload still works)
// and restores the limits on the SIGINT.
func TestDeadLogReaderNeitherKillsNorStopsTheAgent(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, cappingFlags(addr, state)...)
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var logs testkit.LogBuffer
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			_, _ = logs.Write(append(sc.Bytes(), '\n'))
		}
	}()
	if !testkit.Poll(agentWait, func() bool { return logs.Contains("capping active") && len(requestedLimits(t, addr)) == 4 }) {
		t.Fatalf("agent never capped; logs:\n%s", logs.String())
	}
	// The log reader dies: its end of the pipe closes.
	_ = r.Close()
	<-reading

	// A reload makes the agent log (and rewrite the state file): it must live through it.
	before, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !testkit.Poll(agentWait, func() bool {
		st, err := os.Stat(state)
		return exited(cmd.Process.Pid) || (err == nil && !st.ModTime().Equal(before.ModTime()))
	}) {
		t.Fatal("the agent neither reloaded nor exited")
	}
	if exited(cmd.Process.Pid) {
		t.Fatalf("the agent died when its log reader went away (exit %d); state file: %+v", exitStatus(t, cmd), readState(t, state))
	}
	if !testkit.Poll(agentWait, func() bool { return len(requestedLimits(t, addr)) == 4 }) {
		t.Fatal("no limits on /metrics after the reload with a dead log reader")
	}
	// The lines it could not write are counted where an operator sees them.
	if !testkit.Poll(agentWait, func() bool {
		f := scrape(t, "http://"+addr+"/metrics")["capstan_log_dropped_total"]
		return f != nil && len(f.GetMetric()) == 1 && f.GetMetric()[0].GetCounter().GetValue() > 0
	}) {
		t.Error("capstan_log_dropped_total never counted the lines the dead log reader lost")
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := exitStatus(t, cmd); code != 0 {
		t.Errorf("exit %d after SIGINT with a dead log reader, want 0", code)
	}
	assertRestored(t, state, logs.String())
}

// SIGINT (Ctrl-C in a terminal) restores as SIGTERM does.
func TestCappingRestoresOnSIGINT(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgent(t, cappingFlags(addr, state)...)
	waitCapped(t, a, addr)
	if err := a.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-a.done
	if code := exitStatus(t, a.cmd); code != 0 {
		t.Errorf("exit %d after SIGINT, want 0", code)
	}
	if !strings.Contains(a.Logs(), "original GPU limits restored") {
		t.Errorf("SIGINT did not restore the limits; logs:\n%s", a.Logs())
	}
	assertRestored(t, state, a.Logs())
}

// A panic in one of the agent's goroutines restores the limits, then still kills the process
// with the panic's status (2) and its stack.
func TestCappingRestoresOnAPanic(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgentEnv(t, []string{"CAPSTAN_TEST_INJECT_FAULT=goroutine-panic"}, cappingFlags(addr, state)...)
	a.waitLog(t, "capping active")
	select {
	case <-a.done:
	case <-time.After(agentWait):
		t.Fatalf("the agent did not exit after the injected panic; logs:\n%s", a.Logs())
	}
	code := exitStatus(t, a.cmd)
	logs := a.Logs()
	if code != 2 || !strings.Contains(logs, "panic: injected by CAPSTAN_TEST_INJECT_FAULT") {
		t.Errorf("exit %d, want 2 with the panic on stderr; logs:\n%s", code, logs)
	}
	restored := strings.Index(logs, "original GPU limits restored")
	if restored < 0 || restored > strings.Index(logs, "panic: injected") {
		t.Errorf("the limits were not restored before the process died; logs:\n%s", logs)
	}
	assertRestored(t, state, logs)
}

// A panic in a goroutine that another package started (the budget source, the web server, the
// NIC collector's link subscription, the simulator's device files) reaches the agent's guard
// too: the limits are restored before the process dies of it.
func TestCappingRestoresOnAPanicOutsideTheAgent(t *testing.T) {
	for _, goroutine := range []string{"budget source", "web server", "nic link subscription", "sim device files"} {
		t.Run(goroutine, func(t *testing.T) {
			addr := otlptest.FreeAddr(t)
			dir := t.TempDir()
			state := filepath.Join(dir, "state.json")
			flags := append(cappingFlags(addr, state), "--gpu.sim.state-file="+filepath.Join(dir, "devices.json"))
			a := startAgentEnv(t, []string{"CAPSTAN_TEST_INJECT_FAULT=panic:" + goroutine}, flags...)
			select {
			case <-a.done:
			case <-time.After(agentWait):
				t.Fatalf("the agent did not exit after the injected panic; logs:\n%s", a.Logs())
			}
			code := exitStatus(t, a.cmd)
			logs := a.Logs()
			panicked := strings.Index(logs, fmt.Sprintf("panic: injected by CAPSTAN_TEST_INJECT_FAULT in goroutine %q", goroutine))
			if code != 2 || panicked < 0 {
				t.Fatalf("exit %d, want 2 with the panic on stderr; logs:\n%s", code, logs)
			}
			if !strings.Contains(logs, "capping active") || !strings.Contains(logs, fmt.Sprintf("goroutine=%q", goroutine)) {
				t.Errorf("the panic did not come while capping, or the guard did not name the goroutine; logs:\n%s", logs)
			}
			restored := strings.Index(logs, "original GPU limits restored")
			if restored < 0 || restored > panicked {
				t.Errorf("the limits were not restored before the process died; logs:\n%s", logs)
			}
			assertRestored(t, state, logs)
		})
	}
}

// openPTY returns a pseudo-terminal's master and its slave.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	// Non-blocking, so that the master is pollable: Close then wakes a Read in progress and
	// really closes it, which is what hangs the terminal up.
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	m := os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("naming the pty: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pty's slave: %v", err)
	}
	return m, s
}

// Run in a terminal that then goes away (the window closed, the SSH session dropped): the
// kernel sends SIGHUP, which here means stop, not reload; the agent restores the limits and
// exits instead of capping on with nobody watching.
func TestCappingRestoresWhenTheTerminalHangsUp(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	master, slave := openPTY(t)
	cmd := exec.Command(binary, cappingFlags(addr, state)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// Its own session with the pty as controlling terminal, as a login shell's job has.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = slave.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var out testkit.LogBuffer
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			_, _ = out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	if !testkit.Poll(agentWait, func() bool { return out.Contains("capping active") && len(requestedLimits(t, addr)) == 4 }) {
		t.Fatalf("agent never capped; terminal:\n%s", out.String())
	}
	if st := readState(t, state); st.Clean {
		t.Fatalf("state file clean while capping: %+v", st)
	}
	// The terminal goes away.
	_ = master.Close()
	<-reading
	done := make(chan int, 1)
	go func() { done <- exitStatus(t, cmd) }()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after the terminal hung up, want 0", code)
		}
	case <-time.After(agentWait):
		t.Fatalf("the agent kept running after its terminal hung up; state file: %+v", readState(t, state))
	}
	assertRestored(t, state, out.String())
}

// Every line the agent writes parses in the chosen log format, the OpenTelemetry SDK's errors
// included (an OTLP endpoint where nothing listens makes them).
func TestEveryLogLineParses(t *testing.T) {
	for _, format := range []string{"json", "logfmt"} {
		t.Run(format, func(t *testing.T) {
			a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=1", "--web.listen-address="+otlptest.FreeAddr(t),
				"--log.format="+format, "--otlp.endpoint=127.0.0.1:1", "--otlp.insecure", "--otlp.interval=1s",
				"--otlp.timeout=1s", "--otlp.shutdown-timeout=1s")
			a.waitLog(t, "agent ready")
			// A few export intervals of failures, then the last export's on the stop.
			a.waitLogCount(t, "127.0.0.1:1", 2)
			if code := a.stop(t); code != 0 {
				t.Errorf("exit %d", code)
			}
			lines := strings.Split(strings.TrimRight(a.Logs(), "\n"), "\n")
			for _, line := range lines {
				var err error
				if format == "json" {
					var v map[string]any
					err = json.Unmarshal([]byte(line), &v)
				} else {
					err = parseLogfmt(line)
				}
				if err != nil {
					t.Errorf("line does not parse as %s (%v): %s", format, err, line)
				}
			}
			t.Logf("%d lines, all %s", len(lines), format)
		})
	}
}

// parseLogfmt accepts a line of key=value pairs as log/slog's text handler writes them: a bare
// value, or a Go-quoted one.
func parseLogfmt(line string) error {
	if !strings.HasPrefix(line, "time=") {
		return errors.New("no time= first")
	}
	for rest := line; rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 || strings.ContainsAny(rest[:eq], " \"") {
			return fmt.Errorf("no key=value at %q", rest)
		}
		rest = rest[eq+1:]
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return fmt.Errorf("bad quoted value at %q: %w", rest, err)
			}
			rest = rest[len(q):]
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			if strings.Contains(rest[:sp], `"`) {
				return fmt.Errorf("stray quote at %q", rest)
			}
			rest = rest[sp:]
		} else {
			rest = ""
		}
		if rest != "" {
			if rest[0] != ' ' {
				return fmt.Errorf("no space after a value at %q", rest)
			}
			rest = rest[1:]
		}
	}
	return nil
}

// SIGTERM with an OTLP receiver that is down: the last export waits otlp.shutdown-timeout, not
// the push timeout (10 s here).
func TestStopWithTheReceiverDownHonoursTheShutdownTimeout(t *testing.T) {
	a := startAgent(t, "--gpu.backend=sim", "--gpu.sim.count=1", "--web.listen-address="+otlptest.FreeAddr(t),
		"--otlp.endpoint=127.0.0.1:1", "--otlp.insecure", "--otlp.timeout=10s", "--otlp.shutdown-timeout=1s")
	a.waitLog(t, "agent ready")
	start := time.Now()
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
	took := time.Since(start)
	t.Logf("stopped %v after SIGTERM with otlp.shutdown-timeout 1s and otlp.timeout 10s", took)
	// Far from 1 s for a loaded machine, yet below the 10 s the push timeout would take.
	if took >= 8*time.Second {
		t.Errorf("the stop took %v: otlp.shutdown-timeout 1s was not applied (otlp.timeout is 10s); logs:\n%s", took, a.Logs())
	}
}

// A reload holds the limits for the next controller; when neither the reloaded configuration
// nor the previous one starts again, the agent exits on the error, and puts the originals back
// first instead of leaving the limits it held to nobody.
func TestCappingRestoresWhenNoConfigurationStartsAfterAReload(t *testing.T) {
	addr := otlptest.FreeAddr(t)
	state := filepath.Join(t.TempDir(), "state.json")
	a := startAgentEnv(t, []string{"CAPSTAN_TEST_INJECT_FAULT=start-after-reload"}, cappingFlags(addr, state)...)
	waitCapped(t, a, addr)
	logs := hangUpUntilExit(t, a)
	held := strings.Index(logs, "capping stopped: GPU limits left in place")
	restored := strings.LastIndex(logs, "original GPU limits restored")
	if held < 0 || restored < held {
		t.Errorf("the limits held by the reload were not restored before the exit; logs:\n%s", logs)
	}
	assertRestored(t, state, logs)
}
