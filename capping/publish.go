package capping

import (
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// StoreKey is the key of the controller's batch in the sample store.
const StoreKey = "capping"

// publisher puts the controller's metrics in the sample store once per period. Two batches
// alternate, so the one readers may hold is never the one being filled.
type publisher struct {
	store   *sample.Store // nil: nothing is published
	batches [2]sample.Batch
	cur     int

	budget, fallback, unmet              *sample.Series
	setpoint, measured, err, capW, overS *sample.Series
	rise, fall, swing, cuts              *sample.Series
	mode                                 [numModes]*sample.Series
}

// init builds the series once, so a period allocates nothing.
func (p *publisher) init(c *Controller, store *sample.Store) {
	p.store = store
	scope := attribute.String(metrics.AttrCappingScope, c.set.Scope)
	p.budget = sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, c.src.Name()))
	p.fallback = sample.NewSeries(metrics.CappingBudget, attribute.String(metrics.AttrBudgetSource, "fallback"))
	p.unmet = sample.NewSeries(metrics.CappingBudgetUnmet, scope)
	p.setpoint = sample.NewSeries(metrics.CappingSetpoint, scope)
	p.measured = sample.NewSeries(metrics.CappingMeasured, scope)
	p.err = sample.NewSeries(metrics.CappingError, scope)
	p.capW = sample.NewSeries(metrics.CappingCapTotal, scope)
	p.overS = sample.NewSeries(metrics.CappingOverBudgetTime, scope)
	p.rise = sample.NewSeries(metrics.CappingPowerRamp, attribute.String(metrics.AttrRampDirection, "rise"))
	p.fall = sample.NewSeries(metrics.CappingPowerRamp, attribute.String(metrics.AttrRampDirection, "fall"))
	p.swing = sample.NewSeries(metrics.CappingPowerSwing, scope)
	p.cuts = sample.NewSeries(metrics.CappingFastCuts, scope)
	for m := range numModes {
		p.mode[m] = sample.NewSeries(metrics.CappingMode, attribute.String(metrics.AttrCappingMode, m.String()))
	}
	points := 12 + int(numModes) + 4*len(c.gpus)
	for i := range p.batches {
		p.batches[i].Points = make([]sample.Point, 0, points)
	}
}

// publish puts the period's figures and every GPU's limit and counters in the store.
func (p *publisher) publish(now time.Time, fallback bool, per *periodState, node *nodeWindow, capW float64, gpus []*gpu) {
	if p.store == nil {
		return
	}
	b := &p.batches[p.cur]
	p.cur ^= 1
	b.Reset(StoreKey, now)
	sb := p.budget
	if fallback {
		sb = p.fallback
	}
	b.Add(sb, per.budgetW)
	unmet := 0.0
	if per.unmet {
		unmet = 1
	}
	b.Add(p.unmet, unmet)
	b.Add(p.setpoint, per.setW)
	b.Add(p.measured, per.measW)
	b.Add(p.err, per.errW)
	b.Add(p.capW, capW)
	b.Add(p.overS, per.overS)
	b.Add(p.rise, node.lastRiseWps)
	b.Add(p.fall, node.lastFallWps)
	b.Add(p.swing, node.swingW)
	b.Add(p.cuts, per.cuts)
	for m := range numModes {
		v := 0.0
		if m == per.mode {
			v = 1
		}
		b.Add(p.mode[m], v)
	}
	for _, g := range gpus {
		b.Add(g.sLimit, watts(g.ourMW))
		b.Add(g.sOK, g.actOK)
		b.Add(g.sRefused, g.actRefused)
		b.Add(g.sOver, g.overrides)
	}
	p.store.Put(StoreKey, b)
}
