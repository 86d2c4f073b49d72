// Package clock is the source of time for everything that a simulation or a test drives faster
// than real time: the simulated GPU fleet, the capping controller, the cluster member.
package clock

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock is a source of time, so that a simulation can run faster than real time.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Real returns the wall clock.
func Real() Clock { return realClock{} }

// Manual is a clock that moves only when told; it is safe for concurrent use. Reading it takes
// no lock and moving it allocates nothing: a fleet simulation's GPUs read it from every core
// between two moves. It keeps its time as an offset from its start, so it answers in its
// start's location.
type Manual struct {
	mu     sync.Mutex // serialises the moves
	start  time.Time
	offset atomic.Int64 // nanoseconds since start
}

// NewManual returns a clock standing at start.
func NewManual(start time.Time) *Manual { return &Manual{start: start} }

// Now returns the clock's time.
func (c *Manual) Now() time.Time { return c.start.Add(time.Duration(c.offset.Load())) }

// Advance moves the clock forward by d.
func (c *Manual) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset.Add(int64(d))
	c.mu.Unlock()
}

// Set moves the clock to t. The fleet ignores a move backwards: its GPUs hold their state until
// the clock passes their last simulated instant again.
func (c *Manual) Set(t time.Time) {
	c.mu.Lock()
	c.offset.Store(int64(t.Sub(c.start)))
	c.mu.Unlock()
}
