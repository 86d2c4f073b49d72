package sim

// DrawnW advances the GPU to the clock's now and returns what the board draws: GPUState's
// DrawnW without the rest of the state, for a caller that sums a fleet's draw every period.
func (g *GPU) DrawnW() float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(g.fleet.clock.Now())
	return g.drawnW
}
