package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capstan-power/capstan/capping/cluster"
	"github.com/capstan-power/capstan/internal/otlptest"
	"github.com/capstan-power/capstan/internal/soak/devstate"
	"github.com/capstan-power/capstan/internal/testkit"
)

// A reload on a full state disk, against the binary: the state file lives on a 64 KiB tmpfs
// that is filled before the SIGHUP, as the soak's agent.disk-full does.

// tinyTmpfs mounts a 64 KiB tmpfs for a state file and returns its directory.
func tinyTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the state file needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("mounting a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fillDisk fills the filesystem of dir until a write fails; free empties it again.
func fillDisk(t *testing.T, dir string) (free func()) {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	_ = f.Close()
	if err := os.WriteFile(filepath.Join(dir, "probe"), buf, 0o600); err == nil {
		t.Fatal("the tmpfs is not full")
	}
	free = func() { _ = os.Remove(filler) }
	t.Cleanup(free)
	return free
}

// The reloaded configuration takes the state file the previous one could not mark clean for
// the hand-over it is: no restore as after a crash (on-exit keep, after-crash restore: the
// restore would put 2,800 W of originals back against a 1,600 W budget), capping goes on, and
// a SIGTERM keeps the limits with the file marked clean, so that the next start resumes.
func TestReloadOnAFullStateDiskIsAHandOver(t *testing.T) {
	state := filepath.Join(tinyTmpfs(t), "state.json")
	addr := otlptest.FreeAddr(t)
	// The simulated GPUs keep their limits across the reload, as real ones do.
	flags := append(cappingFlags(addr, state), "--capping.on-exit=keep", "--capping.after-crash=restore",
		"--gpu.sim.state-file="+filepath.Join(t.TempDir(), "devices.json"))
	a := startAgent(t, flags...)
	waitCapped(t, a, addr)
	free := fillDisk(t, filepath.Dir(state))
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	a.waitLog(t, "configuration reloaded")
	select {
	case <-a.done:
		t.Fatalf("the agent exited after a reload on a full disk; logs:\n%s", a.Logs())
	case <-time.After(time.Second):
	}
	a.waitLogCount(t, "capping active", 2)
	var l []float64
	for range 10 { // the limits stay capped through the first periods after the reload
		l = requestedLimits(t, addr)
		if total := sum(l); len(l) != 4 || total > 1600*1.05 {
			t.Fatalf("limits %v (Σ %.0f W) after a reload on a full disk, want them capped to 1600 W; logs:\n%s", l, total, a.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if logs := a.Logs(); strings.Contains(logs, "did not stop cleanly") || strings.Contains(logs, "did not start") {
		t.Fatalf("the reload on a full disk was taken for a crash or did not start; logs:\n%s", logs)
	}
	if code := a.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM; logs:\n%s", code, a.Logs())
	}
	if st := readState(t, state); !st.Clean || len(st.GPUs) != 4 || st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Errorf("state file after on-exit keep on a full disk: %+v, want it clean with the 700 W originals; logs:\n%s", st, a.Logs())
	}
	free()
	next := startAgent(t, flags...)
	next.waitLog(t, "capping active")
	if logs := next.Logs(); !strings.Contains(logs, "resuming with the original limits") || strings.Contains(logs, "did not stop cleanly") {
		t.Errorf("the next start did not resume from a clean state file; logs:\n%s", logs)
	}
	next.stop(t)
}

// When no configuration starts again after a reload on a full disk, the agent exits on the
// error; with on-exit keep it leaves the limits and marks the state file clean (in place: the
// disk is full), so that the next start takes them for kept, not for a crash's.
func TestNoStartAfterAReloadOnAFullStateDiskKeeps(t *testing.T) {
	state := filepath.Join(tinyTmpfs(t), "state.json")
	addr := otlptest.FreeAddr(t)
	flags := append(cappingFlags(addr, state), "--capping.on-exit=keep", "--capping.after-crash=restore")
	a := startAgentEnv(t, []string{"CAPSTAN_TEST_INJECT_FAULT=start-after-reload"}, flags...)
	waitCapped(t, a, addr)
	fillDisk(t, filepath.Dir(state))
	logs := hangUpUntilExit(t, a)
	if strings.Contains(logs, "restored") || strings.Contains(logs, "did not stop cleanly") {
		t.Errorf("on-exit keep restored limits; logs:\n%s", logs)
	}
	if st := readState(t, state); !st.Clean {
		t.Errorf("state file after the exit: %+v, want it marked clean (on-exit keep); logs:\n%s", st, logs)
	}
}

// hangUpUntilExit sends SIGHUP to an agent whose next configuration will not start and waits
// for it to exit with status 1; it returns the agent's logs.
func hangUpUntilExit(t *testing.T, a *agentProcess) string {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.done:
	case <-time.After(agentWait):
		t.Fatalf("the agent did not exit when no configuration started; logs:\n%s", a.Logs())
	}
	logs := a.Logs()
	if code := exitStatus(t, a.cmd); code != 1 {
		t.Errorf("exit %d, want 1; logs:\n%s", code, logs)
	}
	return logs
}

func sum(l []float64) float64 {
	s := 0.0
	for _, v := range l {
		s += v
	}
	return s
}

// A cluster node (on-exit restore) whose configuration does not start again after a reload on
// a full disk restores on its way out only within the floor its group keeps for it: 880 W for
// four 200–700 W GPUs is each GPU's 200 W minimum plus 4 % of the way to its 700 W original,
// 220 W, not the 700 W originals a restore that knows no floor writes.
func TestNoStartAfterAReloadOnAFullStateDiskRestoresWithinTheFloor(t *testing.T) {
	state := filepath.Join(tinyTmpfs(t), "state.json")
	ep, _ := etcdGroup(t, "row-a", cluster.BudgetRecord{Watts: 1400, FloorPerNodeW: 880, SetBy: "test"})
	addr := otlptest.FreeAddr(t)
	devices := filepath.Join(t.TempDir(), "devices.json")
	a := startAgentEnv(t, []string{"CAPSTAN_TEST_INJECT_FAULT=start-after-reload"},
		"--gpu.backend=sim", "--gpu.sim.count=4", "--gpu.sim.trace=steady", "--gpu.sim.state-file="+devices,
		"--web.listen-address="+addr, "--capping.enabled", "--capping.period=200ms", "--capping.state-file="+state,
		"--capping.on-exit=restore", "--capping.after-crash=adopt", "--node.name=gpu-1",
		"--budget.source=etcd", "--etcd.endpoints="+ep, "--etcd.group=row-a", "--etcd.lease-ttl=2s")
	a.waitLog(t, "agent ready")
	var l []float64
	if !testkit.Poll(agentWait, func() bool {
		l = requestedLimits(t, addr)
		return len(l) == 4 && sum(l) <= 1400*1.05
	}) {
		t.Fatalf("limits never capped to the 1400 W grant: %v; logs:\n%s", l, a.Logs())
	}
	fillDisk(t, filepath.Dir(state))
	logs := hangUpUntilExit(t, a)
	dev, err := devstate.Read(devices)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range dev.GPUs {
		if g.LimitMW != 220_000 {
			t.Errorf("GPU %d limit %d mW after the exit, want 220000 (the restore within the node's 880 W floor); logs:\n%s", g.Index, g.LimitMW, logs)
		}
	}
	if st := readState(t, state); !st.Clean || len(st.GPUs) != 4 || st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Errorf("state file after a restore within the floor: %+v, want it kept, marked clean, with the 700 W originals", st)
	}
}
