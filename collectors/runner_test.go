package collectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/metrics"
	"github.com/capstan-power/capstan/internal/sample"
	"github.com/capstan-power/capstan/internal/testkit"
)

type funcCollector func(context.Context, *sample.Batch) error

func (f funcCollector) Collect(ctx context.Context, b *sample.Batch) error { return f(ctx, b) }

var testSeries = sample.NewSeries(metrics.HWPower)

func self(store *sample.Store, name string) (up, duration float64, ok bool) {
	up, duration, _, ok = selfAvailable(store, name)
	return up, duration, ok
}

func selfAvailable(store *sample.Store, name string) (up, duration, available float64, ok bool) {
	store.View(SelfKey(name), func(b *sample.Batch) {
		if b == nil {
			return
		}
		ok = true
		duration = -1
		for _, p := range b.Points {
			switch p.Series.Def {
			case metrics.CollectorUp:
				up = p.Value
			case metrics.CollectorDuration:
				duration = p.Value
			case metrics.CollectorAvailable:
				available = p.Value
			}
		}
	})
	return
}

func points(store *sample.Store, name string) int {
	n := -1
	store.View(name, func(b *sample.Batch) {
		if b != nil {
			n = len(b.Points)
		}
	})
	return n
}

func newRunner() (*Runner, *sample.Store, *testkit.LogBuffer) {
	logs := &testkit.LogBuffer{}
	store := sample.NewStore()
	return NewRunner(store, slog.New(slog.NewTextHandler(logs, nil)), nil), store, logs
}

func TestRunnerReportsSuccessAndFailure(t *testing.T) {
	r, store, logs := newRunner()
	fail := errors.New("sensor bus timeout")
	var mu sync.Mutex
	var next error
	r.Add("flaky", funcCollector(func(_ context.Context, b *sample.Batch) error {
		b.Add(testSeries, 42)
		mu.Lock()
		defer mu.Unlock()
		return next
	}), time.Second, 0)

	r.CollectOnce(context.Background())
	if up, dur, ok := self(store, "flaky"); !ok || up != 1 || dur < 0 {
		t.Fatalf("after success: up=%v duration=%v present=%v", up, dur, ok)
	}
	if n := points(store, "flaky"); n != 1 {
		t.Fatalf("store holds %d points, want 1", n)
	}

	mu.Lock()
	next = fail
	mu.Unlock()
	r.CollectOnce(context.Background())
	r.CollectOnce(context.Background())
	if up, _, _ := self(store, "flaky"); up != 0 {
		t.Errorf("after failure up=%v, want 0", up)
	}
	if n := points(store, "flaky"); n != -1 {
		t.Errorf("a failed collection left %d stale points in the store", n)
	}
	if n := strings.Count(logs.String(), "sensor bus timeout"); n != 1 {
		t.Errorf("a repeated failure was logged %d times at info level and above, want once", n)
	}

	mu.Lock()
	next = nil
	mu.Unlock()
	r.CollectOnce(context.Background())
	if up, _, _ := self(store, "flaky"); up != 1 {
		t.Errorf("after recovery up=%v, want 1", up)
	}
	if !strings.Contains(logs.String(), "collector recovered") {
		t.Error("recovery not logged")
	}
}

func TestRunnerSurvivesAPanickingCollector(t *testing.T) {
	r, store, logs := newRunner()
	r.Add("buggy", funcCollector(func(context.Context, *sample.Batch) error { panic("index out of range") }), time.Second, 0)
	r.CollectOnce(context.Background())
	if up, _, ok := self(store, "buggy"); !ok || up != 0 {
		t.Errorf("panicking collector: up=%v present=%v, want 0", up, ok)
	}
	if !strings.Contains(logs.String(), "collector panicked: index out of range") {
		t.Errorf("panic not reported:\n%s", logs.String())
	}
}

// A collector that panics the same way every time is logged once at error level.
func TestRunnerLogsARepeatedPanicOnce(t *testing.T) {
	r, _, logs := newRunner()
	r.Add("buggy", funcCollector(func(context.Context, *sample.Batch) error { panic("index out of range") }), time.Second, 0)
	for range 5 {
		r.CollectOnce(context.Background())
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("5 identical panics logged %d errors, want 1:\n%s", n, logs.String())
	}
}

// A collection hung past its deadline at shutdown makes Close report the runner busy (so the
// library under it stays open), and leaves that collector unclosed; once it returns, not busy.
func TestRunnerCloseReportsAHungCollection(t *testing.T) {
	r, _, _ := newRunner()
	release := make(chan struct{})
	closed := 0
	r.Add("hung", closerCollector{collect: func(context.Context, *sample.Batch) error { <-release; return nil }, closed: &closed}, time.Second, 20*time.Millisecond)
	r.CollectOnce(context.Background())
	if !r.Close() {
		t.Fatal("Close reported no busy collector while a collection is hung")
	}
	if closed != 0 {
		t.Error("a hung collector was closed under its running collection")
	}
	close(release)
	testkit.WaitFor(t, "Close to report no busy collector once the hung collection was released", func() bool { return !r.Close() })
	if closed != 1 {
		t.Errorf("collector closed %d times once idle, want 1", closed)
	}
}

type closerCollector struct {
	collect func(context.Context, *sample.Batch) error
	closed  *int
}

func (c closerCollector) Collect(ctx context.Context, b *sample.Batch) error {
	return c.collect(ctx, b)
}
func (c closerCollector) Close() error { *c.closed++; return nil }

func TestRunnerFailedStartReportsDown(t *testing.T) {
	r, store, logs := newRunner()
	r.AddFailed("gpu", errors.Join(errors.New("NVML not found"), ErrNoSource))
	if up, _, ok := self(store, "gpu"); !ok || up != 0 {
		t.Errorf("collector that could not start: up=%v present=%v, want 0", up, ok)
	}
	if !strings.Contains(logs.String(), "collector disabled") || !strings.Contains(logs.String(), "NVML not found") {
		t.Errorf("missing the one log line saying why:\n%s", logs.String())
	}
}

// A collector that failed to start is told apart from one whose source the host lacks, so
// that only the first is alerted on; one that runs is available whether it succeeds or not.
func TestRunnerSaysWhetherTheSourceIsThere(t *testing.T) {
	r, store, _ := newRunner()
	r.AddFailed("thermal", fmt.Errorf("no thermal zone: %w", ErrNoSource))
	r.AddFailed("nic", errors.New("netlink: permission denied"))
	r.Add("gpu", funcCollector(func(context.Context, *sample.Batch) error { return errors.New("NVML timeout") }), time.Second, 0)
	r.CollectOnce(context.Background())
	for _, c := range []struct {
		name          string
		up, available float64
	}{{"thermal", 0, 0}, {"nic", 0, 1}, {"gpu", 0, 1}} {
		up, _, available, ok := selfAvailable(store, c.name)
		if !ok || up != c.up || available != c.available {
			t.Errorf("%s: up=%v available=%v present=%v, want up=%v available=%v", c.name, up, available, ok, c.up, c.available)
		}
	}
}

// Run collects each collector on its own interval and signals Ready after every first collection.
func TestRunnerRunAndReady(t *testing.T) {
	r, store, _ := newRunner()
	var mu sync.Mutex
	counts := map[string]int{}
	mk := func(name string) Collector {
		return funcCollector(func(_ context.Context, b *sample.Batch) error {
			mu.Lock()
			counts[name]++
			mu.Unlock()
			b.Add(testSeries, 1)
			return nil
		})
	}
	r.Add("fast", mk("fast"), 100*time.Millisecond, 0)
	r.Add("slow", mk("slow"), time.Hour, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("runner never became ready")
	}
	if points(store, "fast") != 1 || points(store, "slow") != 1 {
		t.Error("ready before every collector's first batch was stored")
	}
	testkit.Poll(testkit.DefaultWait, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return counts["fast"] >= 3
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if counts["fast"] < 3 || counts["slow"] != 1 {
		t.Errorf("collections: fast=%d (want ≥3) slow=%d (want 1): intervals not independent", counts["fast"], counts["slow"])
	}
}
