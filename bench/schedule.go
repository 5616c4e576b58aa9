package bench

import (
	"math"
	"time"
)

// schedule maps a request's sequence number to its intended send time,
// measured from the start of the run, for a rate that rises linearly from
// start to peak over ramp and then stays at peak.
//
// Working from the cumulative count N(t) rather than from "now + 1/rate"
// is what keeps the schedule fixed in advance: a pacer that sleeps 1/rate
// after each send drifts whenever a send is late, and the requests it
// therefore never sends are exactly the samples coordinated omission
// loses.
type schedule struct {
	start, peak float64 // requests per second
	ramp        float64 // seconds
	rampCount   float64 // N(ramp) = (start+peak)/2 * ramp
}

func newSchedule(r Rate) schedule {
	s := schedule{start: r.Start, peak: r.Peak, ramp: r.Ramp.Seconds()}
	if s.ramp == 0 {
		s.start = s.peak
	}
	s.rampCount = (s.start + s.peak) / 2 * s.ramp
	return s
}

// offset returns when request i (0-based) is due.
func (s schedule) offset(i uint64) time.Duration {
	n := float64(i)
	var t float64
	if i == 0 {
		return 0 // 0/0 in the formula below when the ramp starts at 0
	}
	if n < s.rampCount {
		// N(t) = start*t + k*t²/2 with k = (peak-start)/ramp. Solved for t
		// in the form 2n/(start+sqrt(start²+2kn)), which stays exact when
		// start is 0 and when k is 0 (a flat "ramp").
		k := (s.peak - s.start) / s.ramp
		t = 2 * n / (s.start + math.Sqrt(s.start*s.start+2*k*n))
	} else {
		t = s.ramp + (n-s.rampCount)/s.peak
	}
	return time.Duration(t * float64(time.Second))
}

// rateAt is the scheduled rate at offset d, for the progress line and the
// report.
func (s schedule) rateAt(d time.Duration) float64 {
	t := d.Seconds()
	if t >= s.ramp {
		return s.peak
	}
	return s.start + (s.peak-s.start)*t/s.ramp
}

// countBefore is how many requests are due before offset d: the expected
// total of a run of that length.
func (s schedule) countBefore(d time.Duration) float64 {
	t := d.Seconds()
	if t <= s.ramp {
		k := 0.0
		if s.ramp > 0 {
			k = (s.peak - s.start) / s.ramp
		}
		return s.start*t + k*t*t/2
	}
	return s.rampCount + (t-s.ramp)*s.peak
}
