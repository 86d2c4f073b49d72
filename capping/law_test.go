package capping

import (
	"math"
	"testing"
)

// The control law alone, without a fleet: each case starts the law at a cap and feeds it
// periods of (setpoint, measurement, bounds), checking the cap after each.
func TestLawStep(t *testing.T) {
	// Σ min 800 W, Σ max 2800 W (four 200–700 W GPUs); ramp 5 % of Σ max is 140 W a period.
	wide := capBounds{MinW: 800, MaxW: 2800, CeilW: math.Inf(1)}
	type period struct {
		setW, measW float64
		b           capBounds
		want        float64
	}
	cases := []struct {
		name    string
		startW  float64
		periods []period
	}{
		{
			// e = −100: PI gives 1000 − 0.6·100 − 0.3·100 = 910, but a decrease takes at
			// least the whole error at once.
			name: "decrease applied at once", startW: 1000,
			periods: []period{{setW: 900, measW: 1000, b: wide, want: 900}},
		},
		{
			// e = +500: PI asks 800 + 300 + 150 = 1250; the rise stops at 800 + 140.
			name: "increase rate-limited", startW: 800,
			periods: []period{
				{setW: 1000, measW: 500, b: wide, want: 940},
				{setW: 1000, measW: 500, b: wide, want: 1080},
			},
		},
		{
			// Held at a 1000 W ceiling by a positive error for 20 periods, the integral is
			// recomputed from the clamped cap (I = 1000 − 0.3·50 = 985) instead of growing to
			// 1600; the first negative error then takes the cap to 985 − 6 − 3 = 976, below
			// the 990 a wound-up integral would stop at.
			name: "anti-windup at the ceiling", startW: 1000,
			periods: append(repeat(period{setW: 1050, measW: 1000, b: capBounds{MinW: 800, MaxW: 2800, CeilW: 1000}, want: 1000}, 20),
				period{setW: 990, measW: 1000, b: capBounds{MinW: 800, MaxW: 2800, CeilW: 1000}, want: 976}),
		},
		{
			name: "clamped to Σ min", startW: 1000,
			periods: []period{{setW: 500, measW: 1000, b: wide, want: 800}},
		},
		{
			name: "clamped to Σ max", startW: 2750,
			periods: []period{{setW: 3000, measW: 1000, b: wide, want: 2800}},
		},
		{
			name: "clamped to the budget's ceiling", startW: 1000,
			periods: []period{{setW: 1500, measW: 1000, b: capBounds{MinW: 800, MaxW: 2800, CeilW: 1050}, want: 1050}},
		},
		{
			name: "Σ min wins over a ceiling below it", startW: 1000,
			periods: []period{{setW: 500, measW: 600, b: capBounds{MinW: 800, MaxW: 2800, CeilW: 700}, want: 800}},
		},
		{
			// Derivative on the measurement: a setpoint step with P unchanged gives no
			// derivative kick (1000 + 0.6·50 + 0.3·50 = 1045, then the same e again adds
			// Ki·e = 30: 1075).
			name: "setpoint step without derivative kick", startW: 1000,
			periods: []period{
				{setW: 950, measW: 950, b: wide, want: 1000},
				{setW: 1000, measW: 950, b: wide, want: 1045},
				{setW: 1000, measW: 950, b: wide, want: 1075},
			},
		},
		{
			// A rise in P of 100 W with the same error subtracts Kd·ΔP = 10 W.
			name: "derivative on the measurement", startW: 1000,
			periods: []period{
				{setW: 1050, measW: 1000, b: wide, want: 1045},
				{setW: 1150, measW: 1100, b: wide, want: 1065},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := law{kp: 0.3, ki: 0.6, kd: 0.1, ramp: 0.05}
			l.reset(tc.startW)
			for i, p := range tc.periods {
				if got := l.step(p.setW, p.measW, p.b); math.Abs(got-p.want) > 1e-9 {
					t.Fatalf("period %d: S %v, P %v, bounds %+v: cap %v, want %v", i, p.setW, p.measW, p.b, got, p.want)
				}
			}
		})
	}
}

// settle lowers the cap and takes the unused watts out of the integral: the next period
// starts from the lowered cap, not from the one the law had asked for.
func TestLawSettle(t *testing.T) {
	wide := capBounds{MinW: 800, MaxW: 2800, CeilW: math.Inf(1)}
	l := law{kp: 0.3, ki: 0.6, kd: 0.1, ramp: 0.05}
	l.reset(1000)
	if got := l.step(1050, 1000, wide); got != 1045 {
		t.Fatalf("cap %v, want 1045", got)
	}
	l.settle(1010)
	// I was set to 1010 − 0.3·50 = 995; the same error adds Ki·e = 30 and Kp·e = 15.
	if got := l.step(1050, 1000, wide); math.Abs(got-1040) > 1e-9 {
		t.Errorf("cap after settling at 1010: %v, want 1040", got)
	}
}

func repeat[T any](v T, n int) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = v
	}
	return out
}
