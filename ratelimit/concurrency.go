package ratelimit

import (
	"math"
	"strconv"
	"sync/atomic"
	"time"
)

// Concurrency caps the requests in flight on one route, so that when the
// origins slow down the edge sheds the excess (503 with Retry-After) instead
// of queueing it until they drown.
//
// Set Max before first use and do not change it; a reload that changes the
// cap makes a new Concurrency, and requests in flight release the one they
// acquired. The zero value counts requests but never refuses one. A
// Concurrency is safe for concurrent use and lock-free; it must not be
// copied after first use.
type Concurrency struct {
	// Max is the most requests admitted at once; zero or less means no cap.
	Max int64

	inflight atomic.Int64
}

// Acquire admits a request if fewer than Max are in flight and reports
// whether it did. Every Acquire that returns true must be paired with one
// Release. It never admits more than Max, and never refuses while fewer
// than Max are admitted (a compare-and-swap loop, not add-then-undo, which
// would refuse spuriously while a refused request backs its add out).
func (c *Concurrency) Acquire() bool {
	if c.Max <= 0 {
		c.inflight.Add(1)
		return true
	}
	for {
		n := c.inflight.Load()
		if n >= c.Max {
			return false
		}
		if c.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release ends a request admitted by Acquire.
func (c *Concurrency) Release() { c.inflight.Add(-1) }

// InFlight returns the requests admitted and not yet released.
func (c *Concurrency) InFlight() int64 { return c.inflight.Load() }

// RetryAfterSeconds converts a wait into the delta-seconds value of a
// Retry-After header (RFC 9110 §10.2.3), which has whole seconds only: it
// rounds up, so a client that obeys never comes back before its token, and
// is at least 1, since "0" invites an immediate retry storm.
func RetryAfterSeconds(d time.Duration) int64 {
	if d > math.MaxInt64-time.Second {
		return math.MaxInt64 / int64(time.Second)
	}
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		return 1
	}
	return s
}

// AppendRetryAfter appends the Retry-After value for d to dst without
// allocating (when dst has room), for fasthttp's SetBytesV.
func AppendRetryAfter(dst []byte, d time.Duration) []byte {
	return strconv.AppendInt(dst, RetryAfterSeconds(d), 10)
}
