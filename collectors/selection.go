package collectors

import (
	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// SetMetricFilter makes the runner drop, from every collection, the points of the metrics
// enabled rejects (metrics.NAME.enabled false). Call it before Run.
func (r *Runner) SetMetricFilter(enabled func(*metrics.Def) bool) {
	if enabled == nil {
		r.disabled = nil
		return
	}
	var disabled []bool
	for _, d := range metrics.Table {
		if !enabled(d) {
			if disabled == nil {
				disabled = make([]bool, len(metrics.Table))
			}
			disabled[d.ID] = true
		}
	}
	r.disabled = disabled
}

// dropDisabled removes the points of disabled metrics from b, in place.
func (r *Runner) dropDisabled(b *sample.Batch) {
	if r.disabled == nil {
		return
	}
	kept := b.Points[:0]
	for _, p := range b.Points {
		if !r.disabled[p.Series.Def.ID] {
			kept = append(kept, p)
		}
	}
	clear(b.Points[len(kept):])
	b.Points = kept
}
