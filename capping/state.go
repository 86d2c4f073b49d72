package capping

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
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
	Clean bool       `json:"clean"`
	PID   int        `json:"pid"`
	Saved time.Time  `json:"saved"`
	GPUs  []GPUState `json:"gpus"`
}

// GPUState is one GPU's original limit, keyed by UUID because indexes can change across boots.
type GPUState struct {
	UUID               string `json:"uuid"`
	Index              int    `json:"index"`
	OriginalMilliwatts uint32 `json:"original_milliwatts"`
}

// original returns the saved limit of the GPU with uuid.
func (s *State) original(uuid string) (uint32, bool) {
	for _, g := range s.GPUs {
		if g.UUID == uuid {
			return g.OriginalMilliwatts, true
		}
	}
	return 0, false
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
