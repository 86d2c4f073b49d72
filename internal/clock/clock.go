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
// no lock: a fleet simulation's GPUs read it from every core between two moves.
type Manual struct {
	mu  sync.Mutex // serialises the moves
	now atomic.Pointer[time.Time]
}

// NewManual returns a clock standing at start.
func NewManual(start time.Time) *Manual {
	c := &Manual{}
	c.now.Store(&start)
	return c
}

// Now returns the clock's time.
func (c *Manual) Now() time.Time { return *c.now.Load() }

// Advance moves the clock forward by d.
func (c *Manual) Advance(d time.Duration) {
	c.mu.Lock()
	t := c.now.Load().Add(d)
	c.now.Store(&t)
	c.mu.Unlock()
}

// Set moves the clock to t. The fleet ignores a move backwards: its GPUs hold their state until
// the clock passes their last simulated instant again.
func (c *Manual) Set(t time.Time) {
	c.mu.Lock()
	c.now.Store(&t)
	c.mu.Unlock()
}
