// Package cache is the edge's HTTP cache for a shared cache in the sense of
// RFC 9111: what may be stored, for how long, how old a stored response is,
// and the store itself (ristretto with a byte budget, plus a small
// last-good copy for stale-if-error that ristretto cannot be trusted to keep,
// since it may drop a Set or evict at will).
//
// The request flow (single flight per key, revalidation, serving) belongs
// to the proxy; this package answers questions about responses and keeps
// them.
package cache

import (
	"bytes"
	"strconv"
	"time"
)

// Control is a parsed Cache-Control header. Durations are -1 when the
// directive is absent.
//
// A Control is a plain value and may be copied.
type Control struct {
	NoStore, NoCache, Private, Public          bool
	MustRevalidate, ProxyRevalidate, Immutable bool
	MaxAge, SMaxAge                            time.Duration
	StaleWhileRevalidate, StaleIfError         time.Duration
}

// ParseControl parses a Cache-Control field value. Unknown directives are
// ignored, as RFC 9111 §5.2 requires; a malformed delta-seconds makes that
// directive count as absent, except max-age and s-maxage, where RFC 9111
// §4.2.1 says an invalid value means stale (0).
func ParseControl(v []byte) Control {
	c := Control{MaxAge: -1, SMaxAge: -1, StaleWhileRevalidate: -1, StaleIfError: -1}
	c.add(v)
	return c
}

// controlOf parses every Cache-Control field line of h as one list (RFC
// 9110 §5.3: "Cache-Control: public" and "Cache-Control: no-store" on two
// lines mean "public, no-store"; reading only the first would store what
// the origin forbade).
func controlOf(h []Field) Control {
	c := Control{MaxAge: -1, SMaxAge: -1, StaleWhileRevalidate: -1, StaleIfError: -1}
	for _, f := range h {
		if bytes.EqualFold(f.Key, []byte("Cache-Control")) {
			c.add(f.Value)
		}
	}
	return c
}

// add parses one field value into c.
func (c *Control) add(v []byte) {
	for len(v) > 0 {
		var d []byte
		d, v, _ = bytes.Cut(v, []byte{','})
		name, arg, _ := bytes.Cut(bytes.TrimSpace(d), []byte{'='})
		name, arg = bytes.TrimSpace(name), bytes.Trim(bytes.TrimSpace(arg), `"`)
		switch {
		case eq(name, "no-store"):
			c.NoStore = true
		case eq(name, "no-cache"):
			// A qualified no-cache="Set-Cookie" is read as plain no-cache:
			// the safe reading, and the argument is not needed.
			c.NoCache = true
		case eq(name, "private"):
			c.Private = true
		case eq(name, "public"):
			c.Public = true
		case eq(name, "must-revalidate"):
			c.MustRevalidate = true
		case eq(name, "proxy-revalidate"):
			c.ProxyRevalidate = true
		case eq(name, "immutable"):
			c.Immutable = true
		case eq(name, "max-age"):
			c.MaxAge = lifetimeDirective(c.MaxAge, seconds(arg))
		case eq(name, "s-maxage"):
			c.SMaxAge = lifetimeDirective(c.SMaxAge, seconds(arg))
		case eq(name, "stale-while-revalidate"):
			c.StaleWhileRevalidate = seconds(arg)
		case eq(name, "stale-if-error"):
			c.StaleIfError = seconds(arg)
		}
	}
}

// lifetimeDirective combines a max-age or s-maxage value with the one seen
// before it (-1: none). An invalid value is stale (RFC 9111 §4.2.1), and so
// are two that disagree ("either the first occurrence should be used or
// the response should be considered stale": stale is the reading that
// cannot keep a response the origin meant to expire).
func lifetimeDirective(prev, v time.Duration) time.Duration {
	if v < 0 {
		v = 0
	}
	if prev >= 0 && prev != v {
		return 0
	}
	return v
}

func eq(b []byte, s string) bool { return bytes.EqualFold(b, []byte(s)) }

// seconds parses delta-seconds; -1 when invalid. Values past 2^31 are
// capped there, as RFC 9111 §1.2.2 asks.
func seconds(b []byte) time.Duration {
	if len(b) == 0 {
		return -1
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		for _, c := range b {
			if c < '0' || c > '9' {
				return -1
			}
		}
		n = 1 << 31 // all digits, but too large
	}
	if n > 1<<31 {
		n = 1 << 31
	}
	return time.Duration(n) * time.Second
}
