package sim

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The fault file injects NVML faults into the simulated GPUs from outside the agent (a soak
// harness writes it). The fleet re-reads it every devicePollEvery; the faults in force are
// compiled into a faultSet that every device call checks with one atomic load, so a fleet
// without faults pays nothing more.

// Fault kinds.
const (
	FaultError        = "error"
	FaultHang         = "hang"
	FaultLost         = "lost"
	FaultSetLimit     = "set-limit"
	FaultRefuseWrites = "refuse-writes"
	FaultReload       = "reload"
	// FaultMIGLayout reconfigures the GPU's MIG layout once, as an operator running nvidia-smi
	// mig would: the instances the agent knows disappear and new ones appear.
	FaultMIGLayout = "mig-layout"
	// FaultNVLinkErrors adds Count errors of one kind to one NVLink link, once.
	FaultNVLinkErrors = "nvlink-errors"
)

// nvlinkCounters are the NVLink error counters a fault may add to, by name.
var nvlinkCounters = map[string]nvml.NvLinkErrorCounter{
	"replay": nvml.NVLINK_ERROR_DL_REPLAY, "recovery": nvml.NVLINK_ERROR_DL_RECOVERY,
	"crc_flit": nvml.NVLINK_ERROR_DL_CRC_FLIT, "crc_data": nvml.NVLINK_ERROR_DL_CRC_DATA,
}

// Fault is one entry of the fault file.
type Fault struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// GPU is an index, or -1 for every GPU.
	GPU int `json:"gpu"`
	// Calls are NVML device method names, or "*" for all of them (error and hang).
	Calls []string `json:"calls,omitempty"`
	// Code is the NVML error to return (error, refuse-writes).
	Code string `json:"code,omitempty"`
	// Duration is how long each matching call hangs (hang).
	Duration string `json:"duration,omitempty"`
	// LimitMW is the limit an out-of-band write sets (set-limit).
	LimitMW uint32 `json:"limit_mw,omitempty"`
	// Layout is the MIG layout to set, as --gpu.sim.mig writes one GPU's ("3g.40gb,4g.40gb",
	// "off") (mig-layout).
	Layout string `json:"layout,omitempty"`
	// Link, Counter and Count: Count errors of kind Counter (replay, recovery, crc_flit,
	// crc_data) on NVLink link Link (nvlink-errors).
	Link    int    `json:"link,omitempty"`
	Counter string `json:"counter,omitempty"`
	Count   uint64 `json:"count,omitempty"`
	// Until ends the fault; zero means until it leaves the file.
	Until time.Time `json:"until,omitzero"`
}

// FaultFile is the fault file's content.
type FaultFile struct {
	Faults []Fault `json:"faults"`
}

// faultCodes are the NVML errors a fault may return.
var faultCodes = map[string]nvml.Return{
	"ERROR_UNKNOWN":       nvml.ERROR_UNKNOWN,
	"ERROR_TIMEOUT":       nvml.ERROR_TIMEOUT,
	"ERROR_NO_PERMISSION": nvml.ERROR_NO_PERMISSION,
	"ERROR_NOT_SUPPORTED": nvml.ERROR_NOT_SUPPORTED,
	"ERROR_GPU_IS_LOST":   nvml.ERROR_GPU_IS_LOST,
}

const faultCodeNames = "ERROR_UNKNOWN, ERROR_TIMEOUT, ERROR_NO_PERMISSION, ERROR_NOT_SUPPORTED, ERROR_GPU_IS_LOST"

var deviceType = reflect.TypeFor[nvml.Device]()

// faultRule is an error or hang fault compiled for one GPU.
type faultRule struct {
	all   bool
	calls map[string]bool
	ret   nvml.Return   // SUCCESS for a hang
	hang  time.Duration // zero for an error
}

// faultSet is the error and hang faults in force, per GPU index.
type faultSet struct{ byGPU [][]faultRule }

// faultFile is the fleet's view of its fault file.
type faultFile struct {
	path    string
	hash    [32]byte
	read    bool     // hash is of a file read once
	faults  []Fault  // the file's last parsable content
	badHash [32]byte // the last unparsable content, logged once
	logged  map[string]bool
	lost    []bool // GPUs a lost fault holds
}

// parseFaults reads a fault file's content and checks it against the fleet.
func (f *Fleet) parseFaults(data []byte) ([]Fault, error) {
	var ff FaultFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ff); err != nil {
		return nil, err
	}
	m := &f.model
	for i, ft := range ff.Faults {
		where := fmt.Sprintf("faults[%d] (id %q)", i, ft.ID)
		if ft.ID == "" {
			return nil, fmt.Errorf("%s: id is missing", where)
		}
		if ft.Kind != FaultReload && (ft.GPU < -1 || ft.GPU >= len(f.gpus)) {
			return nil, fmt.Errorf("%s: gpu %d is out of range (allowed: -1 for every GPU, or 0 to %d)", where, ft.GPU, len(f.gpus)-1)
		}
		if ft.Code != "" {
			if _, ok := faultCodes[ft.Code]; !ok {
				return nil, fmt.Errorf("%s: code %q is not allowed (allowed: %s)", where, ft.Code, faultCodeNames)
			}
		}
		switch ft.Kind {
		case FaultError, FaultHang:
			if len(ft.Calls) == 0 {
				return nil, fmt.Errorf("%s: calls is missing (NVML device method names, or \"*\")", where)
			}
			for _, c := range ft.Calls {
				if _, ok := deviceType.MethodByName(c); !ok && c != "*" {
					return nil, fmt.Errorf("%s: calls: %q is not an NVML device method (allowed: method names such as GetPowerUsage, or \"*\")", where, c)
				}
			}
			if ft.Kind == FaultHang {
				d, err := time.ParseDuration(ft.Duration)
				if err != nil || d <= 0 || d > time.Hour {
					return nil, fmt.Errorf("%s: duration %q is not allowed (allowed: a duration from 1ns to 1h, such as 30s)", where, ft.Duration)
				}
			}
		case FaultSetLimit:
			if lo, hi := milli(m.MinLimitW), milli(m.MaxLimitW); ft.LimitMW < lo || ft.LimitMW > hi {
				return nil, fmt.Errorf("%s: limit_mw %d is outside the GPU's constraints (allowed: %d to %d)", where, ft.LimitMW, lo, hi)
			}
		case FaultMIGLayout:
			if _, _, err := ParseMIGLayout(m.Name, ft.Layout); err != nil {
				return nil, fmt.Errorf("%s: layout: %w", where, err)
			}
		case FaultNVLinkErrors:
			if n := m.nvlinkLinks(); ft.Link < 0 || ft.Link >= n {
				return nil, fmt.Errorf("%s: link %d is out of range (allowed: 0 to %d for a %s)", where, ft.Link, n-1, m.Name)
			}
			if _, ok := nvlinkCounters[ft.Counter]; !ok {
				return nil, fmt.Errorf("%s: counter %q is not one of replay, recovery, crc_flit, crc_data", where, ft.Counter)
			}
			if ft.Count == 0 {
				return nil, fmt.Errorf("%s: count is missing (errors to add, 1 or more)", where)
			}
		case FaultLost, FaultRefuseWrites, FaultReload:
		default:
			return nil, fmt.Errorf("%s: kind %q is not one of error, hang, lost, set-limit, refuse-writes, reload, mig-layout, nvlink-errors", where, ft.Kind)
		}
	}
	return ff.Faults, nil
}

// pollFaults re-reads the fault file when its content changed and applies the faults in force
// at now: one-shot faults once per id, lost GPUs lost (and back, at the default limit, once no
// fault holds them), error and hang rules compiled for the device calls.
func (f *Fleet) pollFaults(now time.Time) {
	d := f.files
	if d == nil || d.faults == nil {
		return
	}
	ff := d.faults
	data, err := os.ReadFile(ff.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		data, err = nil, nil
	case err != nil:
		sum := sha256.Sum256([]byte(err.Error()))
		if sum != ff.badHash {
			ff.badHash = sum
			d.log.Warn("sim: reading the fault file; keeping the faults in force", "file", ff.path, "err", err)
		}
		data = nil
	}
	if err == nil {
		if sum := sha256.Sum256(data); !ff.read || sum != ff.hash {
			ff.read, ff.hash = true, sum
			faults, perr := f.parseFaults(data)
			if len(bytes.TrimSpace(data)) == 0 {
				faults, perr = nil, nil
			}
			switch {
			case perr != nil && sum != ff.badHash:
				ff.badHash = sum
				d.log.Warn("sim: the fault file does not parse; keeping the faults in force", "file", ff.path, "err", perr)
			case perr == nil:
				ff.faults = faults
			}
		}
	}
	f.applyFaults(now)
}

// applyFaults puts the fault file's faults in force at now.
func (f *Fleet) applyFaults(now time.Time) {
	d := f.files
	ff := d.faults
	lost := make([]bool, len(f.gpus))
	set := &faultSet{byGPU: make([][]faultRule, len(f.gpus))}
	rules := 0
	for _, ft := range ff.faults {
		if !ft.Until.IsZero() && !now.Before(ft.Until) {
			continue
		}
		if !ff.logged[ft.ID] {
			ff.logged[ft.ID] = true
			d.log.Info("sim: fault injected", "id", ft.ID, "kind", ft.Kind, "gpu", ft.GPU)
		}
		gpus := f.gpus
		if ft.GPU >= 0 && ft.Kind != FaultReload {
			gpus = f.gpus[ft.GPU : ft.GPU+1]
		}
		switch ft.Kind {
		case FaultLost:
			for _, g := range gpus {
				lost[g.index] = true
			}
		case FaultSetLimit, FaultReload, FaultMIGLayout, FaultNVLinkErrors:
			d.mu.Lock()
			done := d.applied[ft.ID]
			d.applied[ft.ID] = true
			d.mu.Unlock()
			if done {
				continue
			}
			for _, g := range gpus {
				switch ft.Kind {
				case FaultSetLimit:
					f.setLimit(g, float64(ft.LimitMW)/1000, WriterOutOfBand)
				case FaultReload:
					f.setLimit(g, f.model.DefaultLimitW, WriterReload)
					g.resetMIG()
				case FaultMIGLayout:
					_ = f.SetMIGLayout(g.index, ft.Layout) // checked when the file was parsed
				case FaultNVLinkErrors:
					_ = f.InjectNVLinkErrors(g.index, ft.Link, nvlinkCounters[ft.Counter], ft.Count)
				}
			}
		default:
			r := compileRule(ft)
			for _, g := range gpus {
				set.byGPU[g.index] = append(set.byGPU[g.index], r)
				rules++
			}
		}
	}
	for i, g := range f.gpus {
		switch {
		case lost[i] && !ff.lost[i]:
			g.lost.Store(true)
		case !lost[i] && ff.lost[i]:
			// Back from the bus as after a driver reload: at the default limit.
			f.setLimit(g, f.model.DefaultLimitW, WriterReload)
			g.lost.Store(false)
		}
	}
	ff.lost = lost
	if rules == 0 {
		set = nil
	}
	f.active.Store(set)
}

func compileRule(ft Fault) faultRule {
	r := faultRule{calls: map[string]bool{}}
	switch ft.Kind {
	case FaultRefuseWrites:
		r.calls["SetPowerManagementLimit"] = true
		r.ret = nvml.ERROR_NO_PERMISSION
	case FaultHang:
		r.hang, _ = time.ParseDuration(ft.Duration)
	default:
		r.ret = nvml.ERROR_UNKNOWN
	}
	if c, ok := faultCodes[ft.Code]; ok && ft.Kind != FaultHang {
		r.ret = c
	}
	for _, c := range ft.Calls {
		r.all = r.all || c == "*"
		r.calls[c] = true
	}
	return r
}

// setLimit sets GPU g's power-management limit from outside the agent's NVML calls.
func (f *Fleet) setLimit(g *GPU, watts float64, writer string) {
	g.mu.Lock()
	now := f.clock.Now()
	g.advance(now)
	g.requestLimit(watts, now)
	g.mu.Unlock()
	f.limitChanged(g, writer)
}

// fault is the device calls' check: the error a fault makes GPU g's current call return, after
// any hang a fault puts on it; SUCCESS when none applies. Without faults it is one atomic load.
func (f *Fleet) fault(g *GPU) nvml.Return {
	set := f.active.Load()
	if set == nil {
		return nvml.SUCCESS
	}
	method := ""
	for _, r := range set.byGPU[g.index] {
		if !r.all {
			if method == "" {
				method = deviceMethod()
			}
			if !r.calls[method] {
				continue
			}
		}
		if r.hang > 0 {
			f.sleep(r.hang)
			continue
		}
		return r.ret
	}
	return nvml.SUCCESS
}

// gpuMethodPrefix and migMethodPrefix are how the runtime names the methods of *GPU and
// *MigDevice, e.g. "github.com/capstan-power/capstan/collectors/gpu/sim.(*GPU).".
var (
	gpuMethodPrefix = reflect.TypeFor[GPU]().PkgPath() + ".(*GPU)."
	migMethodPrefix = reflect.TypeFor[GPU]().PkgPath() + ".(*MigDevice)."
)

// deviceMethod names the NVML device method being called: the outermost method of *GPU or of
// *MigDevice (a MIG device handle is an nvml.Device too) on the stack, so that a method
// answering through another (GetCurrentClocksThrottleReasons, a MIG device asking its GPU)
// matches by the name the caller used.
func deviceMethod() string {
	var pcs [24]uintptr
	n := runtime.Callers(3, pcs[:])
	frames := runtime.CallersFrames(pcs[:n])
	name := ""
	for {
		fr, more := frames.Next()
		m, ok := strings.CutPrefix(fr.Function, gpuMethodPrefix)
		if !ok {
			m, ok = strings.CutPrefix(fr.Function, migMethodPrefix)
		}
		if ok {
			name = m
		} else if name != "" {
			return name
		}
		if !more {
			return name
		}
	}
}
