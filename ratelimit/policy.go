package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults of a Policy, one place each. A zero field of a Policy means the
// default below.
const (
	// DefaultIPv6Prefix keys IPv6 clients by their /64: RFC 6177 and
	// every residential ISP hand a subscriber at least a /64, so a
	// single host can rotate through 2^64 addresses at will but not
	// through /64s.
	DefaultIPv6Prefix = 64

	// DefaultMaxClients bounds the buckets one policy remembers:
	// 131,072, at most about 24 MiB of heap (~190 bytes a client,
	// measured: README.md). Sized from the working set: only a bucket
	// that has not refilled yet carries information, and a bucket refills
	// in Burst/Rate (2 s for the default 50/s, burst 100 policy; 2.5 s for
	// the purchase policy), so this keeps every client exact up to about
	// 50,000 new clients a second.
	DefaultMaxClients = 1 << 17

	// DefaultIdleTTL is how long an entry stays without a request before
	// it is dropped (never less than its refill time: see Policy.IdleTTL).
	DefaultIdleTTL = time.Minute
)

// minMaxClients is the smallest capacity: one entry per shard.
const minMaxClients = shardCount

// Policy is one named rate limit: a token bucket of Rate tokens per second
// holding at most Burst, one bucket per client.
//
// A Policy is a plain value; it is comparable, and two policies are the
// same policy exactly when they are == after defaults are applied (which
// is what Set.Reconfigure uses to keep buckets across a reload).
type Policy struct {
	// Name identifies the policy in config, in Set and in metrics.
	Name string

	// Rate is the sustained rate in requests (tokens) per second. It must
	// be positive: a policy that should block everything is an ACL, not a
	// rate limit.
	Rate float64

	// Burst is the bucket size: how many requests a client that has been
	// quiet may send at once. At least 1.
	Burst int

	// Header, when set, keys clients on this request header (an API key,
	// say) instead of the client IP. The caller falls back to the client
	// IP when the header is absent or empty (see Limiter.Key). Only key on
	// a header the origin authenticates: a client that invents a new value
	// per request gets a new bucket per request.
	Header string

	// IPv6Prefix is the prefix length IPv6 clients are keyed by; zero
	// means DefaultIPv6Prefix. IPv4 clients are always keyed by their
	// full address.
	IPv6Prefix int

	// MaxClients bounds the number of buckets remembered (and so memory);
	// zero means DefaultMaxClients. When full, the least recently seen
	// client of the shard is forgotten to make room.
	MaxClients int

	// IdleTTL drops the bucket of a client not seen for this long; zero
	// means DefaultIdleTTL. It is never shorter than the time a drained
	// bucket takes to refill (Burst/Rate): a bucket idle that long is
	// full, the same as a new one, so dropping it hands no client a token
	// it had not earned.
	IdleTTL time.Duration
}

// Validate reports what is wrong with p, naming the field and what to do.
// Zero values that mean a default are valid.
func (p Policy) Validate() error {
	var errs []error
	if p.Name == "" {
		errs = append(errs, errors.New("name is empty: give every rate limit policy a name"))
	}
	if !(p.Rate > 0) || math.IsInf(p.Rate, 0) {
		errs = append(errs, fmt.Errorf("rate must be a positive number of requests per second, got %v", p.Rate))
	}
	if p.Burst < 1 {
		errs = append(errs, fmt.Errorf("burst must be at least 1 request, got %d", p.Burst))
	}
	if p.Header != "" && !isToken(p.Header) {
		errs = append(errs, fmt.Errorf("header %q is not a valid header name (RFC 9110 token characters only)", p.Header))
	}
	if p.IPv6Prefix < 0 || p.IPv6Prefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_prefix must be between 1 and 128 (0 means %d), got %d", DefaultIPv6Prefix, p.IPv6Prefix))
	}
	if p.MaxClients < 0 || (p.MaxClients > 0 && p.MaxClients < minMaxClients) || p.MaxClients > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("max_clients must be between %d and %d (0 means %d), got %d", minMaxClients, math.MaxInt32, DefaultMaxClients, p.MaxClients))
	}
	if p.IdleTTL < 0 {
		errs = append(errs, fmt.Errorf("idle_ttl must not be negative (0 means %v), got %v", DefaultIdleTTL, p.IdleTTL))
	}
	if err := errors.Join(errs...); err != nil {
		if p.Name == "" {
			return fmt.Errorf("ratelimit policy: %w", err)
		}
		return fmt.Errorf("ratelimit policy %q: %w", p.Name, err)
	}
	return nil
}

// withDefaults returns p with its zero fields replaced by the defaults.
func (p Policy) withDefaults() Policy {
	if p.IPv6Prefix == 0 {
		p.IPv6Prefix = DefaultIPv6Prefix
	}
	if p.MaxClients == 0 {
		p.MaxClients = DefaultMaxClients
	}
	if p.IdleTTL == 0 {
		p.IdleTTL = DefaultIdleTTL
	}
	return p
}

// refill is how long a drained bucket of p takes to fill up, rounded up to
// the nanosecond and capped at the largest Duration.
func (p Policy) refill() time.Duration {
	ns := math.Ceil(float64(p.Burst) / p.Rate * float64(time.Second))
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// isToken reports whether s is an RFC 9110 token, the syntax of a field name.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' || c == '*' ||
			c == '+' || c == '-' || c == '.' || c == '^' || c == '_' || c == '`' || c == '|' || c == '~':
		default:
			return false
		}
	}
	return s != ""
}
