// Package suggest finds the names a user most likely meant when they typed one that does not
// exist: a flag, a configuration key, a metric.
package suggest

import (
	"slices"
	"strings"
)

// maxSuggestions bounds how many names one message gives; more would be a listing, not a hint,
// and Closest then ends its answer with More.
const maxSuggestions = 5

// More ends a list of suggestions that was cut short.
const More = "…"

// Closest returns the names closest to typed, in order, at most maxSuggestions and then More: the same name
// in another case; else the names within a small edit distance (a typo, a swapped pair of
// letters); else names that end with typed as a whole dotted part (watts → budget.watts); else
// names that start with typed (budget → budget.file, budget.watts). Nothing when none is close.
func Closest(typed string, names []string) []string {
	names = slices.Sorted(slices.Values(names))
	lower := strings.ToLower(typed)
	for _, n := range names {
		if strings.ToLower(n) == lower {
			return []string{n}
		}
	}
	best, bestD := []string(nil), closeEnough(typed)
	for _, n := range names {
		switch d := distance(lower, strings.ToLower(n)); {
		case d > bestD:
		case len(best) == 0 || d < bestD:
			best, bestD = []string{n}, d
		case d == bestD:
			best = append(best, n)
		}
	}
	if len(best) > 0 {
		return first(best)
	}
	var ends, starts []string
	for _, n := range names {
		ln := strings.ToLower(n)
		switch {
		case strings.HasSuffix(ln, "."+lower):
			ends = append(ends, n)
		case len(lower) >= 3 && strings.HasPrefix(ln, lower):
			starts = append(starts, n)
		}
	}
	if len(ends) > 0 {
		return first(ends)
	}
	return first(starts)
}

// closeEnough is the largest edit distance still taken for a typo of s: one edit in a short
// name, about one in four characters in a longer one.
func closeEnough(s string) int { return max(1, len(s)/4) }

func first(names []string) []string {
	if len(names) > maxSuggestions {
		return append(names[:maxSuggestions:maxSuggestions], More)
	}
	return names
}

// distance is the optimal-string-alignment edit distance between a and b: insertions,
// deletions, substitutions and transpositions of adjacent bytes each cost one.
func distance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// DidYouMean phrases Closest's answer as the end of an error message: " (did you mean x?)",
// " (did you mean one of x, y, …?)", or "" for no suggestion. prefix goes before each name
// ("--" for flags).
func DidYouMean(hint []string, prefix string) string {
	named := make([]string, len(hint))
	for i, h := range hint {
		named[i] = h
		if h != More {
			named[i] = prefix + h
		}
	}
	switch len(named) {
	case 0:
		return ""
	case 1:
		return " (did you mean " + named[0] + "?)"
	}
	return " (did you mean one of " + strings.Join(named, ", ") + "?)"
}
