package soak

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// simFault is one entry of the sim's fault file (--gpu.sim.fault-file).
type simFault struct {
	ID       string   `json:"id"`
	Kind     string   `json:"kind"`
	GPU      int      `json:"gpu"`
	Calls    []string `json:"calls,omitempty"`
	Code     string   `json:"code,omitempty"`
	Duration string   `json:"duration,omitempty"`
	Until    string   `json:"until,omitempty"`
	LimitMW  int64    `json:"limit_mw,omitempty"`
	Layout   string   `json:"layout,omitempty"`
	Link     int      `json:"link,omitempty"`
	Counter  string   `json:"counter,omitempty"`
	Count    uint64   `json:"count,omitempty"`
}

// faultFile is a node's fault file, rewritten atomically (temp file + rename) on every change,
// as the sim's contract asks.
type faultFile struct {
	path string
	mu   sync.Mutex
	list []simFault
	seq  int
}

func newFaultFile(path string) (*faultFile, error) {
	f := &faultFile{path: path}
	return f, f.writeLocked()
}

// add puts a fault in the file and returns its id; until (when not zero) is when the sim
// stops applying it.
func (f *faultFile) add(sf simFault, until time.Time) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	sf.ID = fmt.Sprintf("soak-%d-%d", time.Now().UnixNano()%1e9, f.seq)
	if !until.IsZero() {
		sf.Until = until.UTC().Format(time.RFC3339Nano)
	}
	f.list = append(f.list, sf)
	return sf.ID, f.writeLocked()
}

// remove takes a fault out of the file.
func (f *faultFile) remove(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	kept := f.list[:0]
	for _, sf := range f.list {
		if sf.ID != id {
			kept = append(kept, sf)
		}
	}
	f.list = kept
	return f.writeLocked()
}

func (f *faultFile) writeLocked() error {
	raw, err := json.MarshalIndent(struct {
		Faults []simFault `json:"faults"`
	}{append([]simFault{}, f.list...)}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".faults-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(raw); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.path)
}
