package cluster

import (
	"slices"
)

// Claim is one node's part in a water-filling: it gets at least Lo, up to Want before anyone
// gets more than they want, and never more than Hi. Weight is its priority.
type Claim struct {
	Lo, Want, Hi float64
	Weight       float64
}

// WaterFill shares available watts among claims and writes each share into out (same length).
// Every claim first gets Lo; the rest rises like water, each claim at a rate proportional to its
// weight, first up to Want, then (when watts are left) up to Hi. When available is below Σ Lo
// every claim gets its Lo all the same and the function reports false: the group is
// oversubscribed. Lo is what a node runs at anyway, so a share below it would only hide watts.
func WaterFill(claims []Claim, available float64, out []float64, scratch []int) (fits bool, scratchOut []int) {
	sumLo := 0.0
	for i, c := range claims {
		out[i] = c.Lo
		sumLo += c.Lo
	}
	if available < sumLo {
		return false, scratch
	}
	left := available - sumLo
	left, scratch = fill(claims, out, left, func(c Claim) float64 { return max(c.Want, c.Lo) }, scratch)
	_, scratch = fill(claims, out, left, func(c Claim) float64 { return max(c.Hi, c.Lo) }, scratch)
	return true, scratch
}

// fill raises out[i] towards top(claims[i]) at rates proportional to weight, spending at most
// left watts, and returns what is left. It finds the water level by sorting the claims by the
// level at which each fills up: O(n log n).
func fill(claims []Claim, out []float64, left float64, top func(Claim) float64, idx []int) (float64, []int) {
	idx = idx[:0]
	for i, c := range claims {
		if top(c) > out[i] && c.Weight > 0 {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 || left <= 0 {
		return left, idx
	}
	level := func(i int) float64 { return (top(claims[i]) - out[i]) / claims[i].Weight }
	slices.SortFunc(idx, func(a, b int) int {
		la, lb := level(a), level(b)
		switch {
		case la < lb:
			return -1
		case la > lb:
			return 1
		}
		return a - b
	})
	// Walk the claims in the order they fill; at each step every claim not yet full rises by
	// the same level, costing level × Σ weight of those claims.
	sumW := 0.0
	for _, i := range idx {
		sumW += claims[i].Weight
	}
	lambda := 0.0
	k := 0
	for k < len(idx) {
		next := level(idx[k]) // level at which claim idx[k] is full, from where out started
		cost := (next - lambda) * sumW
		if cost > left {
			break
		}
		left -= cost
		lambda = next
		sumW -= claims[idx[k]].Weight
		k++
	}
	if k < len(idx) && sumW > 0 {
		lambda += left / sumW
		left = 0
	}
	for j, i := range idx {
		if j < k {
			out[i] = top(claims[i])
		} else {
			out[i] += lambda * claims[i].Weight
		}
	}
	return left, idx
}
