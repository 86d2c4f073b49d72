package capping

// law is the state of the control law that moves the total GPU cap C: a positional PI(D) law
// C = I + Kp·e − Kd·ΔP on the error e = S − P, with I integrating Ki·e. It knows nothing of
// GPUs, budgets or NVML: the controller hands it the setpoint, the measurement and the bounds
// each period, so a test can drive it alone.
type law struct {
	kp, ki, kd float64
	// ramp is the most C rises in one period, as a share of Σ max.
	ramp float64

	capW     float64 // C
	integral float64 // I
	prevP    float64
	havePrev bool
	// lastE and lastDP are the error and measurement change of the last step, kept to
	// back-calculate I when the controller lowers C after the step (settle).
	lastE, lastDP float64
}

// capBounds are the limits of the total cap in one period.
type capBounds struct {
	// MinW and MaxW are Σ min and Σ max of the capped GPUs' limit constraints.
	MinW, MaxW float64
	// CeilW is the ceiling the budget allows: B × (1 + oversubscription).
	CeilW float64
	// FloorW is the budget's static share: caps summing to it keep the node within its budget
	// whatever the GPUs draw (static caps do no better), so the law never goes below it. The
	// law moves only what is lent above it.
	FloorW float64
	// RiseW, when positive, is the most C may rise in this period (the rise limit in W/s times
	// the period), the floor's rises included.
	RiseW float64
}

// clamp bounds capW to [Σ min, min(Σ max, ceiling)]; Σ min wins when the two cross, since no
// GPU can be set below its minimum.
func (b capBounds) clamp(capW float64) float64 {
	return max(b.MinW, min(capW, b.MaxW, b.CeilW))
}

func newLaw(s Settings) law {
	return law{kp: s.Kp, ki: s.Ki, kd: s.Kd, ramp: s.Ramp}
}

// step runs one period of the law and returns the new total cap. A decrease is applied at once
// (at least the whole error), an increase is limited to ramp × Σ max per period, C never goes
// below the budget's static share (FloorW) nor rises by more than RiseW, and after clamping I
// is recomputed from C (back-calculation), so a saturated or rate-limited cap never winds the
// integral up. The derivative acts on the measurement, not the error, so a setpoint step gives
// no kick. The controller hands it the window's peak of measured power, so what is lent above
// the floor is lent only against a surplus that lasted.
func (l *law) step(setW, measW float64, b capBounds) float64 {
	e := setW - measW
	dP := 0.0
	if l.havePrev {
		dP = measW - l.prevP
	}
	l.prevP, l.havePrev, l.lastE, l.lastDP = measW, true, e, dP
	prev := l.capW
	l.integral += l.ki * e
	next := l.integral + l.kp*e - l.kd*dP
	if e < 0 {
		next = min(next, prev+e)
	}
	if next > prev {
		next = min(next, prev+l.ramp*b.MaxW)
	}
	next = max(next, b.FloorW)
	if b.RiseW > 0 && next > prev {
		next = min(next, prev+b.RiseW)
	}
	next = b.clamp(next)
	l.integral = next - l.kp*e + l.kd*dP
	l.capW = next
	return next
}

// settle lowers C to capW after the step (the GPUs could not take all of it) and
// back-calculates I from it, so the unused watts do not stay in the integral.
func (l *law) settle(capW float64) {
	l.capW = capW
	l.integral = capW - l.kp*l.lastE + l.kd*l.lastDP
}

// reset starts the law afresh at capW: the integral holds C and the previous measurement is
// forgotten (at start, and when power readings come back after failsafe caps).
func (l *law) reset(capW float64) {
	l.capW, l.integral, l.havePrev = capW, capW, false
}
