package capping

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// stateVersion is the format of the state file; a newer one is refused, not guessed at.
const stateVersion = 1

// State is what the state file holds: every GPU's power limit from before Capstan first wrote
// one, so that a restart, even after a crash, can put them back.
type State struct {
	Version int `json:"version"`
	// Clean is true when the agent that wrote the file stopped on purpose and left its limits
	// in place (on_exit keep, or a configuration reload); false while capping runs, so a file
	// found with Clean false was left by a crash.
	Clean bool `json:"clean"`
	PID   int  `json:"pid"`
	// Process is a token drawn once per agent process: a file that carries this process's
	// token was written by it (a configuration before a reload), not by a crashed agent, also
	// when it is not marked clean (the mark failed on a full disk). A PID alone cannot say so:
	// an agent in a container is PID 1 in every life.
	Process string     `json:"process,omitempty"`
	Saved   time.Time  `json:"saved"`
	GPUs    []GPUState `json:"gpus"`
}

// processToken is this process's State.Process.
var processToken = newProcessToken()

func newProcessToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return hex.EncodeToString(b[:])
}

// writtenHere reports whether this process wrote the state.
func (s *State) writtenHere() bool { return s != nil && s.Process != "" && s.Process == processToken }

// GPUState is one GPU's original limit, keyed by UUID because indexes can change across boots.
type GPUState struct {
	UUID               string `json:"uuid"`
	Index              int    `json:"index"`
	OriginalMilliwatts uint32 `json:"original_milliwatts"`
}

// originals returns every limit saved for the GPU with uuid: one in a sound file.
func (s *State) originals(uuid string) []uint32 {
	var out []uint32
	for _, g := range s.GPUs {
		if g.UUID == uuid {
			out = append(out, g.OriginalMilliwatts)
		}
	}
	return out
}

// implausibleOriginal says why the limits saved for one GPU cannot be its original, or returns
// "": a limit outside the GPU's own constraints was never in force, and two entries for one
// UUID mean the file was not written by an agent.
func implausibleOriginal(saved []uint32, minMW, maxMW uint32) string {
	if len(saved) > 1 {
		return fmt.Sprintf("the GPU is listed %d times (%v mW)", len(saved), saved)
	}
	if mw := saved[0]; mw < minMW || mw > maxMW {
		return fmt.Sprintf("%d mW is outside the GPU's constraints %d..%d mW", mw, minMW, maxMW)
	}
	return ""
}

// ReadState reads the state file; it returns (nil, nil) when there is none.
func ReadState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading capping state file %s: %w", path, err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("reading capping state file %s: %w (move it away only after checking the GPUs' limits by hand)", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("capping state file %s has version %d; this agent reads version %d", path, s.Version, stateVersion)
	}
	return &s, nil
}

// writeState is how the controller saves its state: WriteState, but for tests of a failing disk.
var writeState = WriteState

// WriteState replaces the state file atomically: a temporary file in the same directory is
// written, synced and renamed over it, and the directory is synced, so a crash at any point
// leaves either the old file or the new one, never a torn one.
func WriteState(path string, s *State) error {
	s.Version = stateVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding capping state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the directory of capping state file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return fmt.Errorf("writing capping state file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing capping state file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing capping state file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing capping state file %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing capping state file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename is durable once the directory is; not all filesystems allow it
		d.Close()
	}
	return nil
}

// markCleanInPlace marks the state file at path clean without writing a new file: the way
// WriteState cannot take on a full disk. It changes the file only when it holds exactly want
// but for Clean (this process's file with the same originals, not marked clean), and then only
// the five bytes of Clean's value in place ("false" becomes "true "), which needs no new block
// and is one write within a sector, so the file is never torn.
func markCleanInPlace(path string, want *State) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("reading capping state file %s: %w", path, err)
	}
	if st.Clean {
		return nil
	}
	if !st.writtenHere() || !sameOriginals(st.GPUs, want.GPUs) {
		return fmt.Errorf("capping state file %s is not this agent's with the same original limits", path)
	}
	const from, to = `"clean": false`, `"clean": true `
	at := bytes.Index(data, []byte(from))
	if at < 0 || bytes.Count(data, []byte(`"clean"`)) != 1 {
		return fmt.Errorf("capping state file %s: no single clean field to mark", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(to), int64(at)); err != nil {
		f.Close()
		return fmt.Errorf("marking capping state file %s clean in place: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing capping state file %s: %w", path, err)
	}
	return f.Close()
}

// sameOriginals reports whether a and b hold the same original limit for the same GPUs.
func sameOriginals(a, b []GPUState) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[string]uint32, len(a))
	for _, g := range a {
		m[g.UUID] = g.OriginalMilliwatts
	}
	for _, g := range b {
		if mw, ok := m[g.UUID]; !ok || mw != g.OriginalMilliwatts {
			return false
		}
	}
	return len(m) == len(b)
}

// The state file is locked for as long as a controller caps with it, so that a second agent
// given the same file refuses to start instead of taking the first one's live PID for a crash.
// The lock is an flock on a file beside the state file (the state file itself is replaced by
// rename on every write, so a lock on it would not last); the kernel drops it when the process
// dies, SIGKILL included. On a reload the stopping controller hands the lock to the next one
// in the same process, so there is no moment without it.

// stateLock is a held lock on one state file.
type stateLock struct {
	f      *os.File
	holder lockHolder
	// handedOver is true between a controller's Stop(ExitHold) and the next Start.
	handedOver bool
	// leaveW is the bound on the limits' sum the last controller that held them (Stop with
	// ExitHold) knew for a node no agent steers (a cluster node's floor; +Inf for none),
	// when leaveKnown. A restore from the state file by a controller that does not know it
	// (no configuration started again after the reload) stays within it.
	leaveW     float64
	leaveKnown bool
}

// lockHolder is what the lock file says about the process that holds it.
type lockHolder struct {
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

// stateLocks are the locks this process holds, by the state file's absolute path.
var stateLocks = struct {
	sync.Mutex
	held map[string]*stateLock
}{held: map[string]*stateLock{}}

// LockPath is the file whose flock guards the state file at path.
func LockPath(path string) string { return path + ".lock" }

func lockKey(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}

// lockState takes the lock on the state file at path, or the one a stopped controller of this
// process handed over (then it reports takenOver). It fails, naming the holder, when another
// agent (or another controller of this process) holds it.
func lockState(path string) (takenOver bool, err error) {
	key := lockKey(path)
	stateLocks.Lock()
	defer stateLocks.Unlock()
	if l, ok := stateLocks.held[key]; ok {
		if !l.handedOver {
			return false, inUse(path, l.holder)
		}
		l.handedOver = false
		return true, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("creating the directory of capping state file %s: %w", path, err)
	}
	lp := LockPath(path)
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return false, fmt.Errorf("opening the lock of capping state file %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		var h lockHolder
		data, rerr := os.ReadFile(lp)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			if rerr == nil {
				_ = json.Unmarshal(data, &h)
			}
			return false, inUse(path, h)
		}
		return false, fmt.Errorf("locking capping state file %s (%s): %w", path, lp, err)
	}
	h := lockHolder{PID: os.Getpid(), Started: time.Now().UTC()}
	// Who holds the lock is for the error of the agent that is refused; failing to say it
	// does not weaken the lock.
	if data, err := json.Marshal(h); err == nil && f.Truncate(0) == nil {
		_, _ = f.WriteAt(append(data, '\n'), 0)
	}
	stateLocks.held[key] = &stateLock{f: f, holder: h}
	return false, nil
}

func inUse(path string, h lockHolder) error {
	holder := "an agent that did not say who it is"
	if h.PID > 0 {
		holder = fmt.Sprintf("the agent with PID %d, running since %s", h.PID, h.Started.Format(time.RFC3339))
	}
	return fmt.Errorf("capping state file %s is in use by %s (lock %s): two agents must not cap the same GPUs; give each its own capping.state-file or stop the other one",
		path, holder, LockPath(path))
}

// unlockState lets go of the lock on the state file at path; with handOver it stays held for
// the next controller of this process (a reload).
func unlockState(path string, handOver bool) {
	key := lockKey(path)
	stateLocks.Lock()
	defer stateLocks.Unlock()
	l, ok := stateLocks.held[key]
	if !ok {
		return
	}
	if handOver {
		l.handedOver = true
		return
	}
	delete(stateLocks.held, key)
	l.f.Close() // closing the only descriptor releases the flock
}

// holdLeave records, for a reload's hand-over of the lock on path, the bound on the limits' sum
// the holding controller knew for the node once no agent steers it.
func holdLeave(path string, w float64) {
	stateLocks.Lock()
	defer stateLocks.Unlock()
	if l, ok := stateLocks.held[lockKey(path)]; ok {
		l.leaveW, l.leaveKnown = w, true
	}
}

// heldLeave is what holdLeave recorded for the lock on path this process holds, or +Inf.
func heldLeave(path string) float64 {
	stateLocks.Lock()
	defer stateLocks.Unlock()
	if l, ok := stateLocks.held[lockKey(path)]; ok && l.leaveKnown {
		return l.leaveW
	}
	return math.Inf(1)
}
