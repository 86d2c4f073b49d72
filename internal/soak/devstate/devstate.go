// Package devstate reads the device-state file of the sim GPU backend (--gpu.sim.state-file):
// what the simulated hardware holds, written by the fleet itself and outliving the agent. The
// soak harness checks its invariants on these files, the hardware's side, never on the
// agent's own metrics or logs.
package devstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// State is one snapshot of a node's simulated GPUs.
type State struct {
	Version   int       `json:"version"`
	PID       int       `json:"pid"`
	WrittenAt time.Time `json:"written_at"`
	Seq       uint64    `json:"seq"`
	GPUs      []GPU     `json:"gpus"`
}

// GPU is one simulated GPU as the hardware holds it; powers are milliwatts as NVML gives them.
type GPU struct {
	Index       int       `json:"index"`
	UUID        string    `json:"uuid"`
	Model       string    `json:"model"`
	MinMW       int64     `json:"min_mw"`
	MaxMW       int64     `json:"max_mw"`
	DefaultMW   int64     `json:"default_mw"`
	LimitMW     int64     `json:"limit_mw"`
	EnforcedMW  int64     `json:"enforced_mw"`
	PowerMW     int64     `json:"power_mw"`
	Present     bool      `json:"present"`
	LimitSetAt  time.Time `json:"limit_set_at"`
	LimitWriter string    `json:"limit_writer"`
}

// ErrNoFile is returned by Read when the fleet has not written the file yet.
var ErrNoFile = errors.New("no device-state file yet")

// Read reads and checks one device-state file.
func Read(path string) (*State, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNoFile)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the device-state file: %w", err)
	}
	return Parse(path, raw)
}

// Parse decodes a device-state file's content; name says where it came from in errors.
func Parse(name string, raw []byte) (*State, error) {
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: not a device-state file: %w", name, err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, want 1", name, s.Version)
	}
	for i, g := range s.GPUs {
		if g.UUID == "" {
			return nil, fmt.Errorf("%s: gpus[%d] has no uuid", name, i)
		}
		if g.MinMW <= 0 || g.MaxMW < g.MinMW {
			return nil, fmt.Errorf("%s: gpus[%d] (%s): constraints %d..%d mW are not a range", name, i, g.UUID, g.MinMW, g.MaxMW)
		}
	}
	return &s, nil
}

// sumPresentW sums one milliwatt field over the present GPUs, in watts.
func (s *State) sumPresentW(field func(*GPU) int64) float64 {
	var mw int64
	for i := range s.GPUs {
		if s.GPUs[i].Present {
			mw += field(&s.GPUs[i])
		}
	}
	return float64(mw) / 1000
}

// SumEnforcedW is the sum of the enforced limits of the present GPUs, in watts.
func (s *State) SumEnforcedW() float64 {
	return s.sumPresentW(func(g *GPU) int64 { return g.EnforcedMW })
}

// SumLimitW is the sum of the power-management limits of the present GPUs, in watts.
func (s *State) SumLimitW() float64 { return s.sumPresentW(func(g *GPU) int64 { return g.LimitMW }) }

// SumPowerW is the present GPUs' summed instant draw, in watts.
func (s *State) SumPowerW() float64 { return s.sumPresentW(func(g *GPU) int64 { return g.PowerMW }) }

// SumMinW is the sum of the present GPUs' minimum limits, in watts: no budget below it can be
// held by any limit.
func (s *State) SumMinW() float64 { return s.sumPresentW(func(g *GPU) int64 { return g.MinMW }) }

// OutOfConstraints describes every present GPU whose limit or enforced limit lies outside its
// constraints; nil when none does.
func (s *State) OutOfConstraints() []string {
	var out []string
	for _, g := range s.GPUs {
		if !g.Present {
			continue
		}
		if g.LimitMW < g.MinMW || g.LimitMW > g.MaxMW {
			out = append(out, fmt.Sprintf("GPU %d (%s): limit %d mW outside %d..%d mW (written by %s at %s)",
				g.Index, g.UUID, g.LimitMW, g.MinMW, g.MaxMW, g.LimitWriter, g.LimitSetAt.Format(time.RFC3339Nano)))
		}
		if g.EnforcedMW > g.MaxMW || g.EnforcedMW <= 0 {
			out = append(out, fmt.Sprintf("GPU %d (%s): enforced limit %d mW outside 1..%d mW", g.Index, g.UUID, g.EnforcedMW, g.MaxMW))
		}
	}
	return out
}

// ByUUID indexes the GPUs by UUID.
func (s *State) ByUUID() map[string]GPU {
	m := make(map[string]GPU, len(s.GPUs))
	for _, g := range s.GPUs {
		m[g.UUID] = g
	}
	return m
}
