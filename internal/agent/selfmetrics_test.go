package agent

import (
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
)

func droppedOnStore(t *testing.T, store *sample.Store) float64 {
	t.Helper()
	v, ok := -1.0, false
	store.View(selfKey, func(b *sample.Batch) {
		if b != nil {
			v, ok = b.Find(metrics.LogDropped)
		}
	})
	if !ok {
		t.Fatal("no capstan.log.dropped in the store")
	}
	return v
}

// The lines a dead log reader made the agent drop reach the store, from 0 before any.
func TestSelfMetricsCountDroppedLogLines(t *testing.T) {
	store := sample.NewStore()
	w := NewLogWriter(&brokenPipe{n: 1})
	s := newSelfMetrics(store, w, time.Now)
	s.publish()
	if got := droppedOnStore(t, store); got != 0 {
		t.Errorf("before any drop: %v, want 0", got)
	}
	log := NewLogger(w, "info", "logfmt")
	for range 4 {
		log.Info("line")
	}
	s.publish()
	if got := droppedOnStore(t, store); got != 3 {
		t.Errorf("after 3 dropped lines: %v, want 3", got)
	}

	// Without a LogWriter nothing can be dropped: the counter still exists, at 0.
	bare := sample.NewStore()
	newSelfMetrics(bare, nil, time.Now).publish()
	if got := droppedOnStore(t, bare); got != 0 {
		t.Errorf("without a LogWriter: %v, want 0", got)
	}
}
