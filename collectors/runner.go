package collectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/panics"
	"github.com/capstan-power/capstan/internal/sample"
)

// SelfKey is the store key of a collector's own metrics (up, duration); they live apart from its
// data so that a failed collection can drop stale data and still report that it failed.
func SelfKey(name string) string { return "self/" + name }

// Runner drives collectors. Each runs in its own goroutine on its own interval, so one slow or
// hung collector never delays another; every collection has a deadline.
type Runner struct {
	store   *sample.Store
	log     *slog.Logger
	now     func() time.Time
	entries []*entry
	// disabled marks, by metrics.Def.ID, the metrics whose points are dropped; nil drops none.
	disabled []bool

	readyOnce sync.Once
	ready     chan struct{}
}

type entry struct {
	name              string
	collector         Collector
	startErr          error
	interval, timeout time.Duration

	data [2]*sample.Batch // double buffer: the store holds one while the other is filled
	self [2]*sample.Batch
	cur  int // data slot to fill next
	scur int // self slot to fill next

	up, duration, available *sample.Series
	series                  *sample.Series
	nSeries                 int // points of the last successful collection
	// pending is non-nil while a collection that missed its deadline is still running; no new
	// collection starts until it returns, so a hung source cannot pile up goroutines.
	pending <-chan error
	lastErr string // the last failure logged, so a persistent failure is logged once
	ok      bool
}

// NewRunner returns a runner writing to store.
func NewRunner(store *sample.Store, log *slog.Logger, now func() time.Time) *Runner {
	if now == nil {
		now = time.Now
	}
	return &Runner{store: store, log: log, now: now, ready: make(chan struct{})}
}

// Ready is closed once every started collector finished its first collection, failed or not.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// Add registers a started collector. timeout bounds each collection (zero: the interval).
func (r *Runner) Add(name string, c Collector, interval, timeout time.Duration) {
	if timeout <= 0 || timeout > interval {
		timeout = interval
	}
	e := r.newEntry(name)
	e.collector, e.interval, e.timeout = c, interval, timeout
	r.entries = append(r.entries, e)
}

// AddFailed registers a collector that could not start: it reports up=0 for as long as the
// agent runs, with one log line saying why.
func (r *Runner) AddFailed(name string, err error) {
	e := r.newEntry(name)
	e.startErr = err
	r.entries = append(r.entries, e)
	if errors.Is(err, ErrNoSource) {
		r.log.Info("collector disabled", "collector", name, "reason", err)
	} else {
		r.log.Error("collector disabled: it could not start", "collector", name, "err", err)
	}
	r.putSelf(e, 0, false)
}

func (r *Runner) newEntry(name string) *entry {
	attr := attribute.String(metrics.AttrCollector, name)
	e := &entry{
		name:      name,
		up:        sample.NewSeries(metrics.CollectorUp, attr),
		duration:  sample.NewSeries(metrics.CollectorDuration, attr),
		available: sample.NewSeries(metrics.CollectorAvailable, attr),
		series:    sample.NewSeries(metrics.CollectorSeries, attr),
		ok:        true,
	}
	for i := range e.data {
		e.data[i] = &sample.Batch{}
		e.self[i] = &sample.Batch{Points: make([]sample.Point, 0, 3)}
	}
	return e
}

// Names returns the names of every registered collector, started or not.
func (r *Runner) Names() []string {
	out := make([]string, len(r.entries))
	for i, e := range r.entries {
		out[i] = e.name
	}
	return out
}

// CollectOnce runs one collection of every started collector concurrently and waits for all.
func (r *Runner) CollectOnce(ctx context.Context) {
	var wg sync.WaitGroup
	for _, e := range r.entries {
		if e.collector == nil {
			continue
		}
		wg.Add(1)
		panics.Go("collector "+e.name, func() {
			defer wg.Done()
			r.collect(ctx, e)
		})
	}
	wg.Wait()
}

// Run collects every started collector on its interval until ctx is done. The first
// collection of each starts at once.
func (r *Runner) Run(ctx context.Context) {
	var wg, first sync.WaitGroup
	for _, e := range r.entries {
		if e.collector == nil {
			continue
		}
		wg.Add(1)
		first.Add(1)
		panics.Go("collector "+e.name, func() {
			defer wg.Done()
			t := time.NewTicker(e.interval)
			defer t.Stop()
			r.collect(ctx, e)
			first.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				r.collect(ctx, e)
			}
		})
	}
	panics.Go("collectors ready", func() {
		first.Wait()
		r.readyOnce.Do(func() { close(r.ready) })
	})
	wg.Wait()
}

// Close closes every collector that holds resources, and reports whether a collection is
// still hung. A busy collector is left open, and so must be what it calls into (the NVML
// library): closing a library under a running call is worse than leaking it at exit.
func (r *Runner) Close() (busy bool) {
	for _, e := range r.entries {
		if e.pending != nil {
			select {
			case err := <-e.pending: // the hung collection has returned since
				e.pending = nil
				r.log.Debug("hung collection returned before shutdown", "collector", e.name, "its_result", err)
			default:
				r.log.Warn("collector still busy at shutdown; not closing it", "collector", e.name)
				busy = true
				continue
			}
		}
		c, ok := e.collector.(Closer)
		if !ok {
			continue
		}
		if err := c.Close(); err != nil {
			r.log.Warn("closing collector", "collector", e.name, "err", err)
		}
	}
	return busy
}

func (r *Runner) collect(ctx context.Context, e *entry) {
	if e.pending != nil {
		select {
		case err := <-e.pending:
			e.pending = nil
			r.log.Info("hung collection returned; collecting again", "collector", e.name, "its_result", err)
		default:
			r.fail(e, e.timeout, fmt.Errorf("previous collection still running after its %s deadline", e.timeout))
			return
		}
	}
	if ctx.Err() != nil {
		return
	}

	b := e.data[e.cur]
	start := r.now()
	b.Reset(e.name, start)
	cctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			// A bug in one collector must not take the agent down.
			if p := recover(); p != nil {
				// The stack goes to the debug log: it differs on every panic (goroutine
				// ids), and the error must not, so a panic repeating is logged once.
				r.log.Debug("collector panic stack", "collector", e.name, "stack", string(debug.Stack()))
				done <- fmt.Errorf("collector panicked: %v", p)
			}
		}()
		done <- e.collector.Collect(cctx, b)
	}()

	var err error
	select {
	case err = <-done:
	case <-cctx.Done():
		// Give a collector that honours its context a moment to return what it has.
		select {
		case err = <-done:
		case <-time.After(e.timeout / 10):
			e.pending = done
			// The abandoned goroutine still writes to b: give this slot a fresh buffer.
			e.data[e.cur] = &sample.Batch{}
			if ctx.Err() == nil {
				r.fail(e, e.timeout, fmt.Errorf("collection exceeded its %s deadline", e.timeout))
			}
			return
		}
	}
	elapsed := r.now().Sub(start)
	if err == nil && cctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("collection exceeded its %s deadline", e.timeout)
	}
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down: not a collector failure
		}
		r.fail(e, elapsed, err)
		return
	}
	r.dropDisabled(b)
	e.nSeries = len(b.Points)
	r.store.Put(e.name, b)
	e.cur ^= 1
	r.putSelf(e, elapsed, true)
	if !e.ok {
		r.log.Info("collector recovered", "collector", e.name)
		e.ok, e.lastErr = true, ""
	}
}

// fail drops the collector's stale data and reports it down, logging each new failure once.
func (r *Runner) fail(e *entry, elapsed time.Duration, err error) {
	r.store.Delete(e.name)
	r.putSelf(e, elapsed, false)
	if msg := err.Error(); msg != e.lastErr {
		r.log.Error("collection failed", "collector", e.name, "err", err)
		e.lastErr = msg
	} else {
		r.log.Debug("collection failed again", "collector", e.name, "err", err)
	}
	e.ok = false
}

func (r *Runner) putSelf(e *entry, elapsed time.Duration, up bool) {
	s := e.self[e.scur]
	e.scur ^= 1
	s.Reset(SelfKey(e.name), r.now())
	v := 0.0
	if up {
		v = 1
	}
	s.Add(e.up, v)
	if e.startErr == nil {
		s.Add(e.duration, elapsed.Seconds())
	}
	// A collector whose source the host lacks is down by design; one that failed to start
	// on a host that has it is a fault to alert on.
	avail := 1.0
	if errors.Is(e.startErr, ErrNoSource) {
		avail = 0
	}
	s.Add(e.available, avail)
	if up {
		s.Add(e.series, float64(e.nSeries))
	}
	r.store.Put(SelfKey(e.name), s)
}
