package agent

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

// selfKey is the store key of the agent's own metrics (the collectors' are under
// collectors.SelfKey).
const selfKey = "self/agent"

// selfEvery is how often the agent's own metrics are refreshed.
const selfEvery = time.Second

// selfMetrics publishes the agent's own metrics: today the log lines a dead log reader made it
// drop.
type selfMetrics struct {
	store   *sample.Store
	logs    *LogWriter // nil when the logger does not write through one: nothing is dropped
	now     func() time.Time
	batches [2]sample.Batch
	cur     int
	dropped *sample.Series
}

func newSelfMetrics(store *sample.Store, logs *LogWriter, now func() time.Time) *selfMetrics {
	return &selfMetrics{store: store, logs: logs, now: now, dropped: sample.NewSeries(metrics.LogDropped, attribute.String(metrics.AttrLogIOStream, "stderr"))}
}

func (s *selfMetrics) publish() {
	b := &s.batches[s.cur]
	s.cur ^= 1
	b.Reset(selfKey, s.now())
	dropped := 0.0
	if s.logs != nil {
		dropped = float64(s.logs.Dropped())
	}
	b.Add(s.dropped, dropped)
	s.store.Put(selfKey, b)
}

// run publishes at once, then every selfEvery until ctx is done.
func (s *selfMetrics) run(ctx context.Context) {
	s.publish()
	t := time.NewTicker(selfEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.publish()
		}
	}
}
