package capping

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/testkit"
)

// A second controller given the same state file is refused with the holder named, writes
// nothing and leaves the first one's state file alone; a reload hands the lock over, and a
// stop lets it go.
func TestSecondControllerOnTheStateFileIsRefused(t *testing.T) {
	r := newRig(t, "steady", 4, 1500, nil)
	r.run(10 * time.Second)
	capped := r.requested()

	second := r.newController()
	err := second.Start()
	if err == nil {
		t.Fatal("a second controller started on a state file the first one holds")
	}
	for _, want := range []string{r.set.StateFile, "in use", fmt.Sprintf("PID %d", os.Getpid()), "running since"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	for i, l := range r.requested() {
		if l != capped[i] {
			t.Errorf("GPU %d limit %v after the refused start, want the first controller's %v", i, l, capped[i])
		}
	}
	if err := second.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	if st, err := ReadState(r.set.StateFile); err != nil || st == nil || st.Clean || st.GPUs[0].OriginalMilliwatts != 700_000 {
		t.Fatalf("state file after the refused controller stopped: %+v, %v; want the first one's", st, err)
	}
	if _, err := lockState(r.set.StateFile); err == nil {
		t.Fatal("the refused controller's Stop let go of the first one's lock")
	}

	// A reload: the lock passes to the next controller with no moment free for another.
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	if out := tryLockElsewhere(t, r.set.StateFile); !strings.Contains(out, "in use") {
		t.Errorf("another process took the lock during a reload's hand-over: %s", out)
	}
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatalf("the reloaded controller did not take the lock over: %v", err)
	}
	if err := r.newController().Start(); err == nil {
		t.Fatal("a third controller started beside the reloaded one")
	}
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	if out := tryLockElsewhere(t, r.set.StateFile); out != "locked" {
		t.Errorf("after a stop another process could not take the lock: %s", out)
	}
}

// The lock holds across processes: a process holding it refuses this one, naming its PID, and
// its death (the kernel drops the flock) frees the state file.
func TestStateFileLockAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	cmd, stdin, lines := holdLockElsewhere(t, path)
	if got := testkit.Receive(t, lines, 30*time.Second, "the other process's lock"); got != "locked" {
		t.Fatalf("the other process did not lock: %s", got)
	}
	_, err := lockState(path)
	if err == nil {
		t.Fatal("locked a state file another process holds")
	}
	if want := fmt.Sprintf("PID %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("refusal %q does not name the holder (%s)", err, want)
	}
	stdin.Close() // the holder exits
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := lockState(path); err != nil {
		t.Fatalf("the state file stayed locked after its holder died: %v", err)
	}
	unlockState(path, false)
}

// The other process of the lock tests: with CAPSTAN_TEST_LOCK set it locks that state file,
// says "locked" (or the error), and holds the lock until its stdin closes.
func TestHelperLockProcess(t *testing.T) {
	path := os.Getenv("CAPSTAN_TEST_LOCK")
	if path == "" {
		t.Skip("run by the lock tests as another process")
	}
	if _, err := lockState(path); err != nil {
		fmt.Println(strings.ReplaceAll(err.Error(), "\n", " "))
		return
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

func holdLockElsewhere(t *testing.T, path string) (*exec.Cmd, io.WriteCloser, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLockProcess$")
	cmd.Env = append(os.Environ(), "CAPSTAN_TEST_LOCK="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() }) // a second Wait fails harmlessly
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return cmd, stdin, lines
}

// tryLockElsewhere has another process try the lock on path and returns what it said, once
// that process is gone (and with it any lock it took).
func tryLockElsewhere(t *testing.T, path string) string {
	t.Helper()
	cmd, stdin, lines := holdLockElsewhere(t, path)
	said := testkit.Receive(t, lines, 30*time.Second, "the other process's try")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the other process: %v", err)
	}
	return said
}

// Implausible originals in the state file (never in force on these GPUs, or listed twice) are
// refused by name and value, and the GPU's default limit stands in for them: a restore never
// writes them.
func TestImplausibleOriginalsFallBackToTheDefault(t *testing.T) {
	r := newRig(t, "steady", 4, 1000, nil)
	r.run(5 * time.Second)
	r.die()
	st, err := ReadState(r.set.StateFile)
	if err != nil || st == nil {
		t.Fatal(st, err)
	}
	st.GPUs[0].OriginalMilliwatts = 1
	st.GPUs[1].OriginalMilliwatts = 4294967295
	st.GPUs[2].OriginalMilliwatts = 150_000 // below the H100's 200 W minimum
	st.GPUs = append(st.GPUs, GPUState{UUID: st.GPUs[3].UUID, Index: 3, OriginalMilliwatts: 650_000})
	uuid0 := st.GPUs[0].UUID
	if err := WriteState(r.set.StateFile, st); err != nil {
		t.Fatal(err)
	}
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	logs := r.logs.String()
	for _, want := range []string{"implausible original", r.set.StateFile, uuid0, "1 mW", "4294967295 mW", "150000 mW", "listed 2 times", "default_milliwatts=700000"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not say %q:\n%s", want, logs)
		}
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v W after the crash restore, want its 700 W default", i, l)
		}
	}
	saved, err := ReadState(r.set.StateFile)
	if err != nil || len(saved.GPUs) != 4 {
		t.Fatalf("state file after the start: %+v, %v; want the 4 GPUs once each", saved, err)
	}
	for _, g := range saved.GPUs {
		if g.OriginalMilliwatts != 700_000 {
			t.Errorf("GPU %d saved with original %d mW, want the 700000 mW default", g.Index, g.OriginalMilliwatts)
		}
	}
}

// "original GPU limits saved" is said only once they are: a save that fails (a full disk) is
// an error, not a line claiming the opposite.
func TestOriginalsSavedIsLoggedAfterTheSave(t *testing.T) {
	r := newRig(t, "steady", 2, 1000, nil)
	if !r.logs.Contains("original GPU limits saved") {
		t.Fatalf("a successful save is not logged:\n%s", r.logs)
	}
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
	writeState = func(string, *State) error { return syscall.ENOSPC }
	t.Cleanup(func() { writeState = WriteState })
	said := r.logs.Count("original GPU limits saved")
	if err := r.newController().Start(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Start with a failing save: %v, want the save's error", err)
	}
	if r.logs.Count("original GPU limits saved") != said {
		t.Errorf("the log says the originals were saved, but the save failed:\n%s", r.logs)
	}
	if err := r.newController().Start(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a failed Start kept the state file locked: %v", err)
	}
}

// A reloaded controller that does not start hands the lock back: the previous configuration's
// controller, which takes over then, finds it, and no other agent had a moment to take it.
func TestFailedReloadKeepsTheLock(t *testing.T) {
	r := newRig(t, "steady", 2, 1000, nil)
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	writeState = func(string, *State) error { return syscall.ENOSPC }
	if err := r.newController().Start(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Start with a failing save: %v, want the save's error", err)
	}
	writeState = WriteState
	if out := tryLockElsewhere(t, r.set.StateFile); !strings.Contains(out, "in use") {
		t.Errorf("another process took the lock after a reload failed: %s", out)
	}
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatalf("the previous configuration's controller did not take the lock back: %v", err)
	}
	if err := r.c.Stop(ExitConfigured); err != nil {
		t.Fatal(err)
	}
}

// When a reload held the limits and no configuration starts again (the state file's disk is
// full, say), the agent's way out writes the originals back without saving anything first:
// a full disk must not leave the GPUs at the limits the reload held.
func TestRestoreFromStateOnAFullDisk(t *testing.T) {
	r := newRig(t, "steady", 4, 1200, nil)
	r.run(20 * time.Second) // caps the GPUs well below their 700 W originals
	if err := r.c.Stop(ExitHold); err != nil {
		t.Fatal(err)
	}
	held := r.requested()
	writeState = func(string, *State) error { return syscall.ENOSPC }
	t.Cleanup(func() { writeState = WriteState })
	if err := r.newController().Start(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Start with a failing save: %v, want the save's error", err)
	}
	if err := r.newController().RestoreFromState(); err != nil {
		t.Fatalf("RestoreFromState on a full disk: %v", err)
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v W after the restore (held at %v W), want its original 700", i, l, held[i])
		}
	}
	if _, err := os.Stat(r.set.StateFile); !os.IsNotExist(err) {
		t.Errorf("the state file is still there after a complete restore: %v", err)
	}
	if out := tryLockElsewhere(t, r.set.StateFile); strings.Contains(out, "in use") {
		t.Errorf("the state file stays locked after the restore: %s", out)
	}
}
