package capping

import (
	"fmt"
	"math"
	"os"
	"syscall"
	"testing"
	"time"
)

// fullDisk makes every state file write fail as on a full disk until the returned func frees it.
func fullDisk(t *testing.T) (free func()) {
	writeState = func(string, *State) error { return syscall.ENOSPC }
	free = func() { writeState = WriteState }
	t.Cleanup(free)
	return free
}

// A reload on a full state disk: the running configuration's controller cannot mark the state
// file clean, and the next configuration's controller must take the file for the hand-over it
// is (this process wrote it), not for a crashed agent's: it neither restores nor adopts as after
// a crash, and starts without saving the file again (it already says what it would). A later
// stop with on-exit keep then marks the file clean in place, so that the next process resumes.
func TestReloadOnAFullDiskIsAHandOver(t *testing.T) {
	for _, crash := range []string{"restore", "adopt"} {
		t.Run(crash, func(t *testing.T) {
			r := newRig(t, "steady", 4, 1200, func(s *Settings) { s.AfterCrash, s.OnExit = crash, "keep" })
			r.run(20 * time.Second)
			free := fullDisk(t)
			if err := r.c.Stop(ExitHold); err == nil {
				t.Fatal("Stop(ExitHold) marked the state file clean on a full disk")
			}
			held := r.requested()
			if sum(held) > 1200*1.05 {
				t.Fatalf("limits %v sum above the 1200 W budget before the reload", held)
			}
			r.c = r.newController()
			startErr := r.c.Start()
			if startErr != nil {
				t.Errorf("the reloaded configuration's controller did not start on a full disk: %v", startErr)
			}
			if r.logs.Contains("did not stop cleanly") {
				t.Errorf("the reloaded controller took its own process's state file for a crash's:\n%s", r.logs)
			}
			for i, l := range r.requested() {
				if l != held[i] {
					t.Errorf("GPU %d limit %v W after the reload, want the held %v W", i, l, held[i])
				}
			}
			if startErr != nil {
				return
			}
			r.run(10 * time.Second)
			if s := sum(r.requested()); s > 1200*1.05 {
				t.Errorf("limits %v sum to %.0f W after the reload, above the 1200 W budget", r.requested(), s)
			}
			kept := r.requested()
			if err := r.c.Stop(ExitConfigured); err != nil {
				t.Fatalf("on-exit keep on a full disk: %v", err)
			}
			for i, l := range r.requested() {
				if l != kept[i] {
					t.Errorf("GPU %d limit %v W after on-exit keep, want %v W", i, l, kept[i])
				}
			}
			st, err := ReadState(r.set.StateFile)
			if err != nil || st == nil || !st.Clean || len(st.GPUs) != 4 || st.GPUs[0].OriginalMilliwatts != 700_000 {
				t.Fatalf("state file after on-exit keep on a full disk: %+v, %v; want it marked clean with the 700 W originals", st, err)
			}
			free()
			processToken = newProcessToken() // the next start is another process
			r.c = r.newController()
			if err := r.c.Start(); err != nil {
				t.Fatal(err)
			}
			if r.logs.Count("did not stop cleanly") > 0 {
				t.Errorf("the next process took a clean stop on a full disk for a crash:\n%s", r.logs)
			}
			for i, l := range r.requested() {
				if l != kept[i] {
					t.Errorf("GPU %d limit %v W after the next start, want the kept %v W", i, l, kept[i])
				}
			}
		})
	}
}

// A state file not marked clean that another process wrote is still a crash's, also when this
// process wrote one before (another life of a PID, as in a container): only the process token
// makes a file this process's.
func TestAnotherProcessesUncleanFileIsACrash(t *testing.T) {
	r := newRig(t, "steady", 4, 1200, func(s *Settings) { s.AfterCrash = "restore" })
	r.run(20 * time.Second)
	r.die() // a new token: the file is the dead process's, with this PID
	r.c = r.newController()
	if err := r.c.Start(); err != nil {
		t.Fatal(err)
	}
	if !r.logs.Contains("did not stop cleanly; restoring") {
		t.Errorf("a crashed agent's state file with the same PID was not taken for a crash's:\n%s", r.logs)
	}
	for i, l := range r.requested() {
		if l != 700 {
			t.Errorf("GPU %d limit %v W after the crash restore, want its original 700 W", i, l)
		}
	}
}

// When a reload held the limits of a cluster node and no configuration starts again, the
// agent's way out restores through a controller on a static source, which knows no floor: the
// originals still go back only within the floor the configuration that held them knew, in the
// shape Stop's restore has (each GPU its minimum plus the same fraction of the way to its
// original), whether or not the hold could mark the state file clean.
func TestRestoreFromStateStaysWithinTheHeldFloor(t *testing.T) {
	for _, full := range []bool{false, true} {
		t.Run(fmt.Sprintf("full_disk=%v", full), func(t *testing.T) {
			src := &grantSource{floor: 880}
			src.grant(1200, 1)
			r := newRig(t, "steady", 4, 2000, func(s *Settings) { s.OnExit, s.AfterCrash = "restore", "adopt" })
			if err := r.c.Stop(ExitHold); err != nil {
				t.Fatal(err)
			}
			r.c = r.newControllerWith(src)
			if err := r.c.Start(); err != nil {
				t.Fatal(err)
			}
			r.run(20 * time.Second)
			if full {
				fullDisk(t)
			}
			err := r.c.Stop(ExitHold)
			if (err != nil) != full {
				t.Fatalf("Stop(ExitHold) with full_disk=%v: %v", full, err)
			}
			// What restoreHeld does: a controller on a static source, restoring from the file.
			if err := r.newController().RestoreFromState(); err != nil {
				t.Fatalf("RestoreFromState: %v", err)
			}
			limits := r.requested()
			for i, l := range limits {
				if l != 220 {
					t.Errorf("GPU %d limit %v W after the restore, want 220 W (200 W minimum plus 4 %% of the way to its 700 W original: 880 W for the node)", i, l)
				}
			}
			if s := sum(limits); s > 880 {
				t.Errorf("limits %v sum to %.0f W, above the node's 880 W floor", limits, s)
			}
			st, err := ReadState(r.set.StateFile)
			if err != nil || st == nil || !st.Clean || st.GPUs[0].OriginalMilliwatts != 700_000 {
				t.Fatalf("state file after a restore within the floor: %+v, %v; want it kept, marked clean, with the 700 W originals", st, err)
			}
		})
	}
}

// A bound recorded for a hand-over is the holder's; a lock taken afresh knows none.
func TestHeldLeaveIsTheHandOvers(t *testing.T) {
	path := t.TempDir() + "/state.json"
	if _, err := lockState(path); err != nil {
		t.Fatal(err)
	}
	if w := heldLeave(path); !math.IsInf(w, 1) {
		t.Errorf("a fresh lock's bound is %v, want none (+Inf)", w)
	}
	holdLeave(path, 0) // a node that knows its bound is its GPUs' minimums
	unlockState(path, true)
	if taken, err := lockState(path); err != nil || !taken {
		t.Fatalf("taking the hand-over: %v, %v", taken, err)
	}
	if w := heldLeave(path); w != 0 {
		t.Errorf("the hand-over's bound is %v, want the holder's 0 W", w)
	}
	unlockState(path, false)
	if _, err := lockState(path); err != nil {
		t.Fatal(err)
	}
	if w := heldLeave(path); !math.IsInf(w, 1) {
		t.Errorf("a lock taken again after a stop keeps the old bound %v", w)
	}
	unlockState(path, false)
	if _, err := os.Stat(LockPath(path)); err != nil {
		t.Fatal(err)
	}
}
