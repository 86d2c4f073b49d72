package sim

import "time"

// unixMicroAt is f.start.Add(step substeps).UnixMicro(), bit for bit, in integer arithmetic:
// the field values' timestamps, which every read of a fleet's power takes.
func (f *Fleet) unixMicroAt(step int64) int64 {
	ns := int64(f.start.Nanosecond()) + step*int64(substep)
	sec := ns / int64(time.Second)
	if ns%int64(time.Second) < 0 {
		sec-- // floor: the nanoseconds within the second are never negative
	}
	return (f.start.Unix()+sec)*1e6 + (ns-sec*int64(time.Second))/1e3
}
