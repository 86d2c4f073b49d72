// Package testkit holds what Capstan's tests share: a log buffer that many goroutines write to,
// waiting on a condition instead of sleeping for a guessed time, and one collection of a
// collector.
package testkit

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capstan-power/capstan/internal/sample"
)

// LogBuffer collects log output from several goroutines; it is safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Contains reports whether the output so far contains s.
func (b *LogBuffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

// Count returns how many times s occurs in the output so far.
func (b *LogBuffer) Count(s string) int { return strings.Count(b.String(), s) }

// NewLogger returns a debug-level logfmt logger writing to a new LogBuffer.
func NewLogger() (*slog.Logger, *LogBuffer) {
	buf := &LogBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// DefaultWait bounds a wait that should end quickly; it only keeps a broken build from hanging,
// so it is generous for a loaded machine.
const DefaultWait = 30 * time.Second

// A wait checks its condition first after pollFirst, then at growing intervals up to pollMax:
// a quick condition is seen at once, and a slow one (a scrape, a child process) is not asked
// hundreds of times a second.
const (
	pollFirst = 5 * time.Millisecond
	pollMax   = 50 * time.Millisecond
)

// Eventually checks cond until it holds and fails tb when timeout passes first; what names
// the condition in the failure.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("gave up after %s waiting for %s", timeout, what)
	}
}

// WaitFor is Eventually with DefaultWait.
func WaitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	Eventually(tb, DefaultWait, what, cond)
}

// Poll checks cond until it holds (true) or timeout passes (false), for callers that report
// the failure themselves.
func Poll(timeout time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	every := pollFirst
	next := time.NewTimer(every)
	defer next.Stop()
	for {
		select {
		case <-next.C:
			if cond() {
				return true
			}
			every = min(2*every, pollMax)
			next.Reset(every)
		case <-deadline.C:
			return cond()
		}
	}
}

// Receive waits for a value from ch and fails tb when timeout passes first or ch is closed.
func Receive[T any](tb testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	tb.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			tb.Fatalf("%s: channel closed", what)
		}
		return v
	case <-time.After(timeout):
		tb.Fatalf("gave up after %s waiting for %s", timeout, what)
	}
	var zero T
	return zero
}

// Collector is what a collector offers its tests: one collection into a batch.
type Collector interface {
	Collect(ctx context.Context, b *sample.Batch) error
}

// Collect runs one collection of c into a new batch named name, stamped now, as the runner
// does, and fails tb if the collection fails.
func Collect(tb testing.TB, name string, c Collector) *sample.Batch {
	tb.Helper()
	b := &sample.Batch{}
	b.Reset(name, time.Now())
	if err := c.Collect(context.Background(), b); err != nil {
		tb.Fatalf("collecting %s: %v", name, err)
	}
	return b
}
