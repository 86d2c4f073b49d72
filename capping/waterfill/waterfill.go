// Package waterfill shares watts by weighted water-filling, the one rule behind both splits of
// a budget: a node's cap across its GPUs (package capping) and a group's budget across its nodes
// (package capping/cluster). Every party rises from the level it has like water, at a rate
// proportional to its weight, until it reaches its top or the watts run out; the result is the
// unique weighted max-min fair share, computed exactly in O(n log n).
package waterfill

import "slices"

// Vessels is what a water-filling raises, as sort.Interface is what a sort orders: n parties,
// each with the watts it has (its level), the most it may rise to in this fill (its top) and
// the rate at which it rises (its weight). The caller keeps the data in whatever shape it has,
// so a fill copies nothing and allocates nothing.
type Vessels interface {
	Len() int
	Level(i int) float64
	Top(i int) float64
	// Weight is party i's priority; a party of weight 0 or less takes nothing.
	Weight(i int) float64
	// Set gives party i its new level.
	Set(i int, watts float64)
}

// Slot is one party's place in a fill's working memory; callers only hold slices of them, to
// hand back to the next fill (or an array on the stack, for a fill that must not allocate).
type Slot struct {
	full float64 // the water level at which the party reaches its top
	i    int
}

// Raise lifts every party below its top towards it, each at a rate proportional to its weight,
// spending at most left watts, and returns what is left (more than zero only when every party
// reached its top). scratch is working memory: pass the returned one back to the next fill to
// keep fills free of allocations.
func Raise[V Vessels](v V, left float64, scratch []Slot) (rest float64, scratchOut []Slot) {
	// full is the water level, in watts per unit of weight above where the party started, at
	// which it reaches its top. Sorting by it orders the parties as they fill up.
	slots := scratch[:0]
	for i := range v.Len() {
		if top, lvl, w := v.Top(i), v.Level(i), v.Weight(i); top > lvl && w > 0 {
			slots = append(slots, Slot{full: (top - lvl) / w, i: i})
		}
	}
	if len(slots) == 0 || left <= 0 {
		return left, slots
	}
	slices.SortFunc(slots, func(a, b Slot) int {
		switch {
		case a.full < b.full:
			return -1
		case a.full > b.full:
			return 1
		}
		return a.i - b.i
	})
	// Walk the parties in the order they fill; at each step every party not yet full rises by
	// the same level, costing the level's rise × Σ weight of those parties.
	sumW := 0.0
	for _, s := range slots {
		sumW += v.Weight(s.i)
	}
	level := 0.0
	k := 0
	for k < len(slots) {
		next := slots[k].full
		cost := (next - level) * sumW
		if cost > left {
			break
		}
		left -= cost
		level = next
		sumW -= v.Weight(slots[k].i)
		k++
	}
	if k < len(slots) && sumW > 0 {
		level += left / sumW
		left = 0
	}
	for j, s := range slots {
		if j < k {
			v.Set(s.i, v.Top(s.i)) // exactly its top, not a rounding error below it
		} else {
			v.Set(s.i, v.Level(s.i)+level*v.Weight(s.i))
		}
	}
	return left, slots
}

// Claim is one party's part in a Share: it gets at least Lo, up to Want before anyone gets more
// than they want, and never more than Hi. Weight is its priority.
type Claim struct {
	Lo, Want, Hi float64
	Weight       float64
}

// Share shares available watts among claims and writes each share into out (same length). Every
// claim first gets Lo; the rest rises by weight, first up to Want, then (when watts are left) up
// to Hi. When available is below Σ Lo every claim gets its Lo all the same and Share reports
// false: the parties are oversubscribed. Lo is what a party runs at anyway, so a share below it
// would only hide watts.
func Share(claims []Claim, available float64, out []float64, scratch []Slot) (fits bool, scratchOut []Slot) {
	sumLo := 0.0
	for i, c := range claims {
		out[i] = c.Lo
		sumLo += c.Lo
	}
	if available < sumLo {
		return false, scratch
	}
	left := available - sumLo
	left, scratch = Raise(toWant{claims, out}, left, scratch)
	_, scratch = Raise(toHi{claims, out}, left, scratch)
	return true, scratch
}

// toWant and toHi are the two stages of a Share: claims filling up to what they want, then up
// to their maximum.
type (
	toWant shares
	toHi   shares
	shares struct {
		claims []Claim
		out    []float64
	}
)

func (s toWant) Len() int             { return len(s.claims) }
func (s toWant) Level(i int) float64  { return s.out[i] }
func (s toWant) Top(i int) float64    { return max(s.claims[i].Want, s.claims[i].Lo) }
func (s toWant) Weight(i int) float64 { return s.claims[i].Weight }
func (s toWant) Set(i int, w float64) { s.out[i] = w }
func (s toHi) Len() int               { return len(s.claims) }
func (s toHi) Level(i int) float64    { return s.out[i] }
func (s toHi) Top(i int) float64      { return max(s.claims[i].Hi, s.claims[i].Lo) }
func (s toHi) Weight(i int) float64   { return s.claims[i].Weight }
func (s toHi) Set(i int, w float64)   { s.out[i] = w }
