package capping

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/capstan-power/capstan/capping/budget"
	"github.com/capstan-power/capstan/internal/config"
)

// SettingsFrom turns the validated configuration into controller settings.
func SettingsFrom(cfg *config.Config) Settings {
	cp := cfg.Capping
	s := Defaults()
	s.Period = cp.Period
	s.Scope = cp.Scope
	s.GuardBand = float64(cp.GuardBandPercent) / 100
	s.Oversubscription = float64(cp.OversubscriptionPercent) / 100
	s.HeadroomW = float64(cp.HeadroomWatts)
	s.DeadbandW = float64(cp.DeadbandWatts)
	s.Ramp = float64(cp.RampPercent) / 100
	s.LostPeriods = cp.LostPeriods
	s.FallbackW = float64(cfg.Budget.FallbackWatts)
	s.DryRun = cp.DryRun
	s.StateFile = cp.StateFile
	s.OnExit = cp.OnExit
	s.AfterCrash = cp.AfterCrash
	s.Weights = map[string]float64{}
	for k, v := range cp.Weights {
		if w, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			s.Weights[k] = float64(w)
		}
	}
	return s
}

// SourceFrom builds the budget source the configuration names. A file source is polled once
// per control period, so a change applies within one period.
func SourceFrom(cfg *config.Config, now func() time.Time, log *slog.Logger) (budget.Source, error) {
	switch cfg.Budget.Source {
	case "static":
		return budget.NewStatic(float64(cfg.Budget.Watts), now())
	case "file":
		return budget.NewFile(cfg.Budget.File, cfg.Capping.Period, now, log), nil
	}
	return nil, fmt.Errorf("budget.source %q is not one of static, file", cfg.Budget.Source)
}
