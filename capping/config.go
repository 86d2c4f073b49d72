package capping

import (
	"strconv"
	"strings"
	"time"

	"github.com/capstan-power/capstan/internal/config"
)

// Settings tune the controller; Defaults returns the documented defaults.
type Settings struct {
	Period time.Duration
	// Scope is gpu (measured power is the GPUs' sum) or node (plus RAPL package power).
	Scope string
	// GuardBand is the share of the budget kept free: S = B × (1 − GuardBand).
	GuardBand float64
	// Oversubscription lets the total cap exceed the budget by this share when the GPUs draw
	// less than their caps.
	Oversubscription float64
	// HeadroomW is what a GPU that is not power-bound gets above its draw.
	HeadroomW float64
	// DeadbandW suppresses limit changes smaller than this.
	DeadbandW float64
	// Ramp is the most the total cap rises in one period, as a share of Σ max.
	Ramp float64
	// MaxRiseWps, when positive, is the most Σ caps may rise per second (0: no limit beyond
	// Ramp): a limit on how fast the node's GPU power may climb back, for sites whose supply
	// cannot follow fast swings.
	MaxRiseWps float64
	// LostPeriods is how many periods of missing power readings trigger failsafe caps.
	LostPeriods int
	// FallbackW is the budget once the source's budget is past its TTL or never came; zero
	// means Σ min.
	FallbackW float64
	DryRun    bool
	StateFile string
	// OnExit is restore or keep: what Stop(ExitConfigured) does with the limits.
	OnExit string
	// AfterCrash is restore or adopt: what Start does with limits left by an agent that did
	// not stop cleanly.
	AfterCrash string
	// Weights maps a GPU index ("0") or UUID to its priority weight; absent means 1.
	Weights map[string]float64
	// Kp, Ki and Kd are the gains per control period: a watt of error moves the cap by Kp W at
	// once and by Ki W per period; Kd W per watt of change in measured power per period.
	Kp, Ki, Kd float64
}

// Defaults returns the default settings: the configuration's defaults (config.Default, where
// they are stated once) and the law's gains.
func Defaults() Settings { return SettingsFrom(config.Default()) }

// The law's gains per control period (see Settings.Kp); the configuration does not set them.
const (
	defaultKp = 0.3
	defaultKi = 0.6
	defaultKd = 0.1
)

// SettingsFrom turns the validated configuration into controller settings.
func SettingsFrom(cfg *config.Config) Settings {
	cp := cfg.Capping
	s := Settings{
		Period:           cp.Period,
		Scope:            cp.Scope,
		GuardBand:        float64(cp.GuardBandPercent) / 100,
		Oversubscription: float64(cp.OversubscriptionPercent) / 100,
		HeadroomW:        float64(cp.HeadroomWatts),
		DeadbandW:        float64(cp.DeadbandWatts),
		Ramp:             float64(cp.RampPercent) / 100,
		MaxRiseWps:       float64(cp.MaxRiseWattsPerSecond),
		LostPeriods:      cp.LostPeriods,
		FallbackW:        float64(cfg.Budget.FallbackWatts),
		DryRun:           cp.DryRun,
		StateFile:        cp.StateFile,
		OnExit:           cp.OnExit,
		AfterCrash:       cp.AfterCrash,
		Weights:          map[string]float64{},
		Kp:               defaultKp, Ki: defaultKi, Kd: defaultKd,
	}
	for k, v := range cp.Weights {
		if w, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			s.Weights[k] = float64(w)
		}
	}
	return s
}
