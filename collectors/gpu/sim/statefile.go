package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/capstan-power/capstan/internal/panics"
)

// The device-state file lets the simulated fleet play the hardware across agent processes: a
// real GPU keeps the limit an agent wrote after that agent dies, until a driver reload. The
// fleet restores the limits from the file when it opens and rewrites the file on every limit
// change and every devicePollEvery while it runs, so that an observer outside the agent (a
// soak harness) can check what the devices hold without asking the agent.

// StateVersion is the version of the device-state file's format.
const StateVersion = 1

// devicePollEvery is how often the fleet rewrites the state file and re-reads the fault file.
const devicePollEvery = 100 * time.Millisecond

// Who last set a GPU's power-management limit, as the state file names it.
const (
	WriterNVML      = "nvml"        // SetPowerManagementLimit
	WriterOutOfBand = "out-of-band" // a write behind the agent's back (a set-limit fault)
	WriterReload    = "reload"      // a driver reload put the default back
)

// StateFile is the device-state file: what every simulated GPU holds.
type StateFile struct {
	Version   int         `json:"version"`
	PID       int         `json:"pid"`
	WrittenAt time.Time   `json:"written_at"`
	Seq       uint64      `json:"seq"`
	GPUs      []GPURecord `json:"gpus"`
	// Applied lists the ids of one-shot faults (set-limit, reload) already applied, so that a
	// restarted agent does not apply them again: they happened to the hardware once.
	Applied []string `json:"applied,omitempty"`
}

// GPURecord is one GPU in the device-state file. Powers are in milliwatts.
type GPURecord struct {
	Index      int       `json:"index"`
	UUID       string    `json:"uuid"`
	Model      string    `json:"model"`
	MinMW      uint32    `json:"min_mw"`
	MaxMW      uint32    `json:"max_mw"`
	DefaultMW  uint32    `json:"default_mw"`
	LimitMW    uint32    `json:"limit_mw"`
	EnforcedMW uint32    `json:"enforced_mw"`
	PowerMW    uint32    `json:"power_mw"`
	Present    bool      `json:"present"`
	LimitSetAt time.Time `json:"limit_set_at"`
	// LimitWriter is nvml, out-of-band or reload.
	LimitWriter string `json:"limit_writer"`
}

// ReadStateFile reads and checks a device-state file. A missing file is (nil, nil): the GPUs
// start at their default limits.
func ReadStateFile(path string) (*StateFile, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the simulated GPU state file: %w", err)
	}
	var s StateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("simulated GPU state file %s does not parse: %w", path, err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("simulated GPU state file %s: version %d is not supported (allowed: %d)", path, s.Version, StateVersion)
	}
	seen := map[string]bool{}
	for i, g := range s.GPUs {
		if g.UUID == "" {
			return nil, fmt.Errorf("simulated GPU state file %s: gpus[%d] has no uuid", path, i)
		}
		if seen[g.UUID] {
			return nil, fmt.Errorf("simulated GPU state file %s: gpus[%d]: uuid %s appears twice", path, i, g.UUID)
		}
		seen[g.UUID] = true
		if g.Present && (g.LimitMW < g.MinMW || g.LimitMW > g.MaxMW) {
			return nil, fmt.Errorf("simulated GPU state file %s: gpus[%d] (%s): limit_mw %d is outside its constraints (allowed: %d to %d)",
				path, i, g.UUID, g.LimitMW, g.MinMW, g.MaxMW)
		}
	}
	return &s, nil
}

// gpuMeta is what the state file says about a GPU's limit besides its value.
type gpuMeta struct {
	setAt  time.Time
	writer string
}

// deviceFiles is the fleet's state and fault files, and the goroutine that keeps them.
type deviceFiles struct {
	statePath string
	log       *slog.Logger
	wall      func() time.Time
	manual    bool // the tests poll and write by hand

	mu      sync.Mutex // guards below
	meta    []gpuMeta
	seq     uint64
	applied map[string]bool
	failed  string // the last write error logged, so a full disk is logged once
	stop    chan struct{}
	done    chan struct{}

	dirty chan struct{} // a limit changed: write soon

	faults *faultFile // nil without a fault file
}

// openFiles reads the device-state file, if any, into the fleet's GPUs and the fault file's
// first content.
func (f *Fleet) openFiles(o Options) error {
	if o.StateFile == "" && o.FaultFile == "" {
		return nil
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &deviceFiles{statePath: o.StateFile, log: log, wall: time.Now, manual: o.manualFiles,
		meta: make([]gpuMeta, len(f.gpus)), applied: map[string]bool{}, dirty: make(chan struct{}, 1)}
	f.files = d
	if o.FaultFile != "" {
		d.faults = &faultFile{path: o.FaultFile, logged: map[string]bool{}, lost: make([]bool, len(f.gpus))}
	}
	if o.StateFile != "" {
		s, err := ReadStateFile(o.StateFile)
		if err != nil {
			return err
		}
		if s != nil {
			if err := f.restore(o.StateFile, s); err != nil {
				return err
			}
		}
	}
	f.pollFaults(d.wall())
	return nil
}

// restore applies a state file's limits to the fleet's GPUs of the same UUID. A GPU that was
// lost when the file was written comes back as after a driver reload, at its default limit,
// unless a lost fault still holds it.
func (f *Fleet) restore(path string, s *StateFile) error {
	byUUID := map[string]*GPURecord{}
	for i := range s.GPUs {
		byUUID[s.GPUs[i].UUID] = &s.GPUs[i]
	}
	m := &f.model
	lo, hi := milli(m.MinLimitW), milli(m.MaxLimitW)
	for _, g := range f.gpus {
		r, ok := byUUID[g.uuid]
		if !ok {
			continue
		}
		if !r.Present {
			// Still off the bus: a lost fault in force keeps it there; otherwise the first poll
			// brings it back as a driver reload would, at its default limit.
			f.files.meta[g.index] = gpuMeta{setAt: f.files.wall(), writer: WriterReload}
			if f.files.faults != nil {
				g.lost.Store(true)
				f.files.faults.lost[g.index] = true
			}
			continue
		}
		if r.LimitMW < lo || r.LimitMW > hi {
			return fmt.Errorf("simulated GPU state file %s: GPU %s limit_mw %d is outside its constraints (allowed: %d to %d)",
				path, g.uuid, r.LimitMW, lo, hi)
		}
		g.mu.Lock()
		g.requestedW = float64(r.LimitMW) / 1000
		g.boundW, g.pendingStep = g.requestedW, -1 // the hardware has held it all along
		g.capW = g.boundLimitW()
		g.allowW = min(g.allowW, g.capW)
		g.drawnW = min(g.drawnW, g.capW)
		g.mu.Unlock()
		f.files.meta[g.index] = gpuMeta{setAt: r.LimitSetAt, writer: r.LimitWriter}
	}
	for _, id := range s.Applied {
		f.files.applied[id] = true
	}
	return nil
}

// limitChanged records who set GPU g's limit and has the state file rewritten soon. It never
// blocks: writes coalesce.
func (f *Fleet) limitChanged(g *GPU, writer string) {
	d := f.files
	if d == nil {
		return
	}
	d.mu.Lock()
	d.meta[g.index] = gpuMeta{setAt: d.wall(), writer: writer}
	d.mu.Unlock()
	select {
	case d.dirty <- struct{}{}:
	default:
	}
}

// snapshot is the state file's content now.
func (f *Fleet) snapshot() StateFile {
	d := f.files
	m := &f.model
	s := StateFile{Version: StateVersion, PID: os.Getpid(), GPUs: make([]GPURecord, 0, len(f.gpus))}
	for _, g := range f.gpus {
		st := g.State()
		d.mu.Lock()
		meta := d.meta[g.index]
		d.mu.Unlock()
		s.GPUs = append(s.GPUs, GPURecord{
			Index: g.index, UUID: g.uuid, Model: m.Name,
			MinMW: milli(m.MinLimitW), MaxMW: milli(m.MaxLimitW), DefaultMW: milli(m.DefaultLimitW),
			LimitMW: milli(st.RequestedLimitW), EnforcedMW: milli(st.EnforcedLimitW), PowerMW: milli(st.DrawnW),
			Present: !st.Lost, LimitSetAt: meta.setAt, LimitWriter: meta.writer,
		})
	}
	d.mu.Lock()
	d.seq++
	s.Seq = d.seq
	for id := range d.applied {
		s.Applied = append(s.Applied, id)
	}
	d.mu.Unlock()
	slices.Sort(s.Applied)
	s.WrittenAt = d.wall().UTC()
	return s
}

// writeState rewrites the state file atomically: a temporary file in the same directory,
// renamed over it. A failure is logged once until a write succeeds again.
func (f *Fleet) writeState() {
	d := f.files
	if d.statePath == "" {
		return
	}
	err := writeAtomic(d.statePath, f.snapshot())
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case err != nil && err.Error() != d.failed:
		d.failed = err.Error()
		d.log.Warn("sim: writing the simulated GPU state file", "file", d.statePath, "err", err)
	case err == nil && d.failed != "":
		d.failed = ""
		d.log.Info("sim: the simulated GPU state file is written again", "file", d.statePath)
	}
}

func writeAtomic(path string, s StateFile) error {
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(append(data, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// startFiles starts the goroutine that keeps the device files while the library is
// initialised.
func (f *Fleet) startFiles() {
	d := f.files
	if d == nil || d.manual {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stop != nil {
		return
	}
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	stop, done := d.stop, d.done
	panics.Go("sim device files", func() { f.keepFiles(stop, done) })
}

// stopFiles stops that goroutine after a last write of the state file.
func (f *Fleet) stopFiles() {
	d := f.files
	if d == nil || d.manual {
		return
	}
	d.mu.Lock()
	stop, done := d.stop, d.done
	d.stop, d.done = nil, nil
	d.mu.Unlock()
	if stop == nil {
		return
	}
	close(stop)
	<-done
}

func (f *Fleet) keepFiles(stop, done chan struct{}) {
	defer close(done)
	d := f.files
	tick := time.NewTicker(devicePollEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			f.writeState()
			return
		case <-d.dirty:
			f.writeState()
		case <-tick.C:
			f.pollFaults(d.wall())
			f.writeState()
		}
	}
}
