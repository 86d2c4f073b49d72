package capping

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/capstan-power/capstan/capping/budget"
)

// The controller's lifecycle: Start saves or recovers the original limits, Stop restores or
// keeps them, both through the state file.

// Start saves the original limits to the state file before anything is written, or, when a
// state file is already there, takes the originals from it: after a crash it restores them or
// adopts the limits in force (AfterCrash); after a clean hand-over it adopts them silently.
// It first locks the state file, held until Stop (and handed to the next controller by
// ExitHold): an agent whose state file another one holds is refused before it writes anything.
// Under dry-run it neither reads nor writes the state file.
func (c *Controller) Start() error {
	c.started = true
	c.mode = ModeActive
	if c.set.DryRun {
		c.mode = ModeDryRun
		for _, g := range c.gpus {
			g.originalMW = g.requestedMW
		}
		c.law.reset(c.bounds(math.Inf(1)).clamp(c.sumEnforced()))
		c.log.Info("capping in dry run: computing limits, writing none", "gpus", len(c.gpus), "budget_source", c.src.Name())
		c.report(c.now(), false)
		return nil
	}
	takenOver, err := lockState(c.set.StateFile)
	if err != nil {
		c.started = false // the lock is another's: Stop must not let it go
		return fmt.Errorf("capping: not writing any limit: %w", err)
	}
	if err := c.start(); err != nil {
		c.started = false
		// A reload's lock goes back to the hand-over, for the previous configuration's
		// controller that takes over when this one does not start.
		unlockState(c.set.StateFile, takenOver)
		return err
	}
	return nil
}

// start is Start once the state file is locked.
func (c *Controller) start() error {
	st, err := ReadState(c.set.StateFile)
	if err != nil {
		return err
	}
	for _, g := range c.gpus {
		g.originalMW = g.requestedMW
		if st != nil {
			c.takeOriginal(g, st)
		}
	}
	if st != nil {
		c.keepOthers(st)
	}
	switch {
	case st == nil:
	case st.Clean:
		c.log.Info("capping: resuming with the original limits from the state file", "state_file", c.set.StateFile)
	case st.writtenHere():
		// A configuration of this agent before a reload could not mark the file clean (a
		// full disk): a hand-over, not a crash, so the limits it held are taken over as a
		// reload takes them.
		c.log.Warn("capping: resuming with the original limits from the state file this agent's previous configuration could not mark clean",
			"state_file", c.set.StateFile)
	case c.set.AfterCrash == "adopt":
		c.log.Warn("capping: state file left by an agent that did not stop cleanly; adopting the limits in force", "state_file", c.set.StateFile, "pid", st.PID)
	default:
		c.log.Warn("capping: state file left by an agent that did not stop cleanly; restoring the original limits", "state_file", c.set.StateFile, "pid", st.PID)
		if _, err := c.restoreWithin(c.leaveWatts()); err != nil {
			// The GPUs that took their original back are safe; capping goes on for all.
			c.log.Error("capping: restoring limits after a crash failed on some GPUs", "err", err)
		}
	}
	if st.writtenHere() && !st.Clean && sameOriginals(st.GPUs, c.state(false).GPUs) {
		// The file already says what this controller would save (this agent's originals,
		// capping running): nothing to write, so a full disk does not stop a reload.
		c.log.Info("capping: the state file already holds these original limits; not saving it again", "state_file", c.set.StateFile)
	} else if err := c.saveState(false); err != nil {
		return fmt.Errorf("capping: not writing any limit, the original limits could not be saved: %w", err)
	}
	if st == nil {
		c.log.Info("capping: original GPU limits saved", "state_file", c.set.StateFile)
	}
	for _, g := range c.gpus {
		g.ourMW = g.requestedMW
	}
	c.law.reset(c.bounds(math.Inf(1)).clamp(c.sumEnforced()))
	c.log.Info("capping active", "gpus", len(c.gpus), "budget_source", c.src.Name(), "period", c.set.Period, "scope", c.set.Scope)
	// The bounds are known before the first period: a source can register the node now.
	c.report(c.now(), false)
	return nil
}

// keepOthers keeps the state file's originals of GPUs this controller does not cap, so that
// every later save carries them on.
func (c *Controller) keepOthers(st *State) {
	seen := map[string]bool{}
	for _, o := range st.GPUs {
		if !c.namesGPU(o.UUID) && !seen[o.UUID] {
			seen[o.UUID] = true
			c.others = append(c.others, o)
		}
	}
}

// takeOriginal sets g's original limit from the state file, unless what the file holds for it
// is implausible: then it is the GPU's default limit (its maximum when NVML does not say), so
// that no restore ever writes a limit that was never in force.
func (c *Controller) takeOriginal(g *gpu, st *State) {
	saved := st.originals(g.uuid)
	if len(saved) == 0 {
		return
	}
	why := implausibleOriginal(saved, g.minMW, g.maxMW)
	if why == "" {
		g.originalMW = saved[0]
		return
	}
	def, ret := g.dev.GetPowerManagementDefaultLimit()
	if ret != nvml.SUCCESS || def < g.minMW || def > g.maxMW {
		def = g.maxMW
	}
	g.originalMW = def
	c.log.Error("capping: the state file holds an implausible original limit; the GPU's default limit stands in for it",
		"state_file", c.set.StateFile, "gpu", g.index, "uuid", g.uuid, "reason", why, "default_milliwatts", def)
}

func (c *Controller) sumEnforced() float64 {
	sum := 0.0
	for _, g := range c.gpus {
		sum += watts(g.clamp(g.enforcedMW))
	}
	return sum
}

// state is what the state file says for this controller.
func (c *Controller) state(clean bool) *State {
	st := &State{Clean: clean, PID: os.Getpid(), Process: processToken, Saved: time.Now().UTC()}
	for _, g := range c.gpus {
		st.GPUs = append(st.GPUs, GPUState{UUID: g.uuid, Index: g.index, OriginalMilliwatts: g.originalMW})
	}
	st.GPUs = append(st.GPUs, c.others...)
	return st
}

func (c *Controller) saveState(clean bool) error {
	return writeState(c.set.StateFile, c.state(clean))
}

// markClean saves the state file marked clean; when that fails (a full disk), a file this
// process wrote with the same originals is marked clean in place, so that the next start
// takes the limits left in place for what they are, not for a crash's.
func (c *Controller) markClean() error {
	err := c.saveState(true)
	if err == nil {
		return nil
	}
	if ierr := markCleanInPlace(c.set.StateFile, c.state(true)); ierr != nil {
		return errors.Join(err, ierr)
	}
	c.log.Warn("capping: the state file could not be written; marked clean in place", "state_file", c.set.StateFile, "err", err)
	return nil
}

// leaveWatts is the most the limits may sum to while no agent steers them: the source's (a
// cluster node's floor), else no bound.
func (c *Controller) leaveWatts() float64 {
	if l, ok := c.src.(budget.Leaver); ok {
		return l.LeaveWatts()
	}
	return math.Inf(1)
}

// restoreWithin writes the original limits back as far as their sum stays within w: all of
// them when it fits, else each GPU gets its minimum plus the same fraction of the way to its
// original (whole watts, rounded down). It reports whether every original was restored.
func (c *Controller) restoreWithin(w float64) (complete bool, err error) {
	var sumMin, sumOrig float64 // mW, exact
	for _, g := range c.gpus {
		sumMin += float64(g.minMW)
		sumOrig += float64(g.clamp(g.originalMW))
	}
	frac := 1.0
	if sumOrig > w*1000 && sumOrig > sumMin {
		frac = max(0, (w*1000-sumMin)/(sumOrig-sumMin))
	}
	var errs []error
	for _, g := range c.gpus {
		orig := g.clamp(g.originalMW)
		mw := orig
		if frac < 1 {
			mw = max(g.minMW, (g.minMW+uint32(float64(orig-g.minMW)*frac))/1000*1000)
		}
		if ret := g.dev.SetPowerManagementLimit(mw); ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("GPU %d (%s) to %d mW: %w", g.index, g.uuid, mw, ret))
			continue
		}
		g.ourMW, g.requestedMW = mw, mw
	}
	return frac >= 1, errors.Join(errs...)
}

// Stop ends capping. ExitConfigured applies OnExit: restore writes the original limits back
// and removes the state file (kept, for the next start to retry, when a write fails); keep
// leaves the limits and marks the state file clean. ExitHold is keep regardless of OnExit.
func (c *Controller) Stop(how Exit) error {
	if !c.started || c.set.DryRun {
		return nil
	}
	c.started = false
	// A reload's next controller takes the lock over; any other stop lets it go.
	defer unlockState(c.set.StateFile, how == ExitHold)
	if how == ExitHold {
		// Should no configuration start again, the agent's way out restores within it.
		holdLeave(c.set.StateFile, c.leaveWatts())
	}
	if how == ExitConfigured && c.set.OnExit == "restore" {
		// A cluster node's group keeps only its floor once it left: originals beyond it wait
		// in the state file for the next start.
		leave := c.leaveWatts()
		complete, err := c.restoreWithin(leave)
		if err != nil {
			return fmt.Errorf("capping: restoring the original limits (state file %s kept for the next start): %w", c.set.StateFile, err)
		}
		// Originals not all written back (the group floor), or those of GPUs this agent could
		// not cap, live on only in the state file: keep it, marked clean.
		if !complete || len(c.others) > 0 {
			if err := c.markClean(); err != nil {
				return fmt.Errorf("capping: marking the state file clean: %w", err)
			}
			if !complete {
				c.log.Info("capping stopped: GPU limits restored as far as the node's share of its group allows",
					"watts", leave, "state_file", c.set.StateFile)
			} else {
				c.log.Info("capping stopped: original GPU limits restored; the state file keeps those of GPUs that were not capped", "state_file", c.set.StateFile)
			}
			return nil
		}
		if err := os.Remove(c.set.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("capping: removing state file: %w", err)
		}
		c.log.Info("capping stopped: original GPU limits restored")
		return nil
	}
	mark := c.markClean
	if how == ExitHold {
		// Not in place: the next configuration's controller would then find a clean file it
		// must mark running again, which a full disk refuses. Left as it is, the file is this
		// process's, which the next controller takes for the hand-over it is.
		mark = func() error { return c.saveState(true) }
	}
	if err := mark(); err != nil {
		return fmt.Errorf("capping: marking the state file clean: %w", err)
	}
	c.log.Info("capping stopped: GPU limits left in place", "state_file", c.set.StateFile)
	return nil
}

// RestoreFromState writes back the original limits the state file holds and removes it, without
// capping and without saving anything first. It is the way out of an agent whose configuration
// did not start again after a reload held the limits: a state file that cannot be written (a
// full disk) must not keep the GPUs at the held limits. The originals go back within the
// source's leave bound, as Stop's do, and within the one the controller that held them knew
// (a cluster node's floor: the agent restores through a static source); the file is kept
// (marked clean where it can be written) when not every original went back.
func (c *Controller) RestoreFromState() error {
	if c.set.DryRun {
		return nil
	}
	takenOver, err := lockState(c.set.StateFile)
	if err != nil {
		return fmt.Errorf("capping: not restoring: %w", err)
	}
	defer unlockState(c.set.StateFile, false)
	_ = takenOver // the hand-over of a reload ends here: nothing takes it after this
	st, err := ReadState(c.set.StateFile)
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("capping: no state file %s to restore the original limits from", c.set.StateFile)
	}
	for _, g := range c.gpus {
		g.originalMW = g.requestedMW
		c.takeOriginal(g, st)
	}
	c.keepOthers(st)
	// The source here knows no bound (the agent restores through a static one); the
	// configuration that held the limits knew its node's (a cluster node's floor).
	leave := min(c.leaveWatts(), heldLeave(c.set.StateFile))
	complete, err := c.restoreWithin(leave)
	if err != nil {
		return fmt.Errorf("capping: restoring the original limits (state file %s kept for the next start): %w", c.set.StateFile, err)
	}
	if !complete || len(c.others) > 0 {
		if err := c.markClean(); err != nil {
			c.log.Warn("capping: original limits restored as far as allowed; the state file could not be marked clean", "state_file", c.set.StateFile, "err", err)
		}
		return nil
	}
	if err := os.Remove(c.set.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("capping: removing state file: %w", err)
	}
	c.log.Info("capping stopped: original GPU limits restored from the state file", "state_file", c.set.StateFile)
	return nil
}

// KeepFromState marks the state file clean when this process wrote it and could not mark it
// (a reload on a full disk), without writing any limit. It is the way out of an agent whose
// configuration did not start again after a reload held the limits, with on-exit keep: the
// limits stay, and the next start must take them for kept, not for a crash's.
func KeepFromState(path string) error {
	if _, err := lockState(path); err != nil {
		return fmt.Errorf("capping: not marking the state file clean: %w", err)
	}
	defer unlockState(path, false)
	st, err := ReadState(path)
	if err != nil || st == nil || st.Clean || !st.writtenHere() {
		return err // a file another process left is not this one to mark
	}
	st.Clean = true
	if err := writeState(path, st); err != nil {
		if ierr := markCleanInPlace(path, st); ierr != nil {
			return fmt.Errorf("capping: marking the state file clean: %w", errors.Join(err, ierr))
		}
	}
	return nil
}
