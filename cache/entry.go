package cache

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Field is one stored response header.
type Field struct{ Key, Value []byte }

// Policy is a route's cache settings. The zero value caches nothing the
// origin does not give a lifetime for, and never serves stale.
//
// A Policy is a plain value and may be copied.
type Policy struct {
	// TTL is the freshness lifetime when the origin states none (no
	// s-maxage, max-age or Expires).
	TTL time.Duration
	// MaxTTL, when > 0, caps every lifetime, the origin's too.
	MaxTTL time.Duration
	// StaleIfError is how long past expiry the last good copy may be served
	// when no origin can answer (RFC 5861), unless the response forbids it.
	// A response's own stale-if-error directive takes precedence.
	StaleIfError time.Duration
	// StaleWhileRevalidate is how long past expiry a stale copy is served
	// while one background request revalidates it (RFC 5861). A response's
	// own directive takes precedence.
	StaleWhileRevalidate time.Duration
	// MaxEntryBytes bounds one stored body; larger responses pass through
	// uncached. Zero means DefaultMaxEntryBytes.
	MaxEntryBytes int
}

// DefaultMaxEntryBytes bounds one stored body when the policy says nothing.
const DefaultMaxEntryBytes = 1 << 20

// Response is what an origin answered, as the proxy hands it over.
type Response struct {
	Status       int
	Header       []Field
	Body         []byte
	RequestTime  time.Time // when the request was sent
	ResponseTime time.Time // when the response was received
}

// Entry is a stored response. It is immutable once made: a refresh makes a
// new Entry, so readers need no lock.
type Entry struct {
	Key    []byte // the full cache key; compared on every hit, so a hash collision is a miss
	Hash   uint64
	Status int
	Header []Field
	Body   []byte

	ETag, LastModified []byte

	// Vary lists the lower-cased request header names the origin's Vary
	// named. On a marker entry (IsVary) it says how to find the variant.
	Vary   []string
	IsVary bool

	ResponseTime        time.Time
	CorrectedInitialAge time.Duration
	Lifetime            time.Duration
	NoCache             bool // revalidate before every use
	MustRevalidate      bool // never served stale (must-revalidate, proxy-revalidate, s-maxage)
	SWR, SIE            time.Duration
}

// Size is the entry's cost in the store's byte budget.
func (e *Entry) Size() int64 {
	n := len(e.Key) + len(e.Body) + 200
	for _, f := range e.Header {
		n += len(f.Key) + len(f.Value) + 48
	}
	return int64(n)
}

// Age is the entry's current age (RFC 9111 §4.2.3).
func (e *Entry) Age(now time.Time) time.Duration {
	return e.CorrectedInitialAge + max(0, now.Sub(e.ResponseTime))
}

// Fresh reports whether the entry may be served without contacting the
// origin.
func (e *Entry) Fresh(now time.Time) bool {
	return !e.NoCache && e.Age(now) < e.Lifetime
}

// ServeWhileRevalidating reports whether a stale entry may be served while
// a background request revalidates it.
func (e *Entry) ServeWhileRevalidating(now time.Time) bool {
	return !e.MustRevalidate && !e.NoCache && e.SWR > 0 && e.Age(now) < e.Lifetime+e.SWR
}

// ServeOnError reports whether the entry may stand in for an origin that
// failed (stale-if-error).
func (e *Entry) ServeOnError(now time.Time) bool {
	return !e.MustRevalidate && e.SIE > 0 && e.Age(now) < e.Lifetime+e.SIE
}

// Get returns the first stored value of a header (case-insensitive).
func (e *Entry) Get(name string) []byte { return getField(e.Header, name) }

func getField(h []Field, name string) []byte {
	for _, f := range h {
		if bytes.EqualFold(f.Key, []byte(name)) {
			return f.Value
		}
	}
	return nil
}

// storableStatus are the codes RFC 9110 §15.1 calls heuristically
// cacheable; only these are stored.
func storableStatus(code int) bool {
	switch code {
	case 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// unstoredHeaders are never kept in an entry: hop-by-hop ones, Age (the
// edge computes its own), Set-Cookie (a response with it is not stored at
// all), and the edge's own X-Cache.
var unstoredHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Age", "X-Cache", "Set-Cookie"}

// Entry decides whether r may be stored under key (RFC 9111 §3) and, if so,
// builds the entry. When it may not, reason says why (for logs and tests).
// hasAuthorization is whether the request carried Authorization.
func (p Policy) Entry(key []byte, hash uint64, r Response, hasAuthorization bool) (e *Entry, reason string) {
	cc := ParseControl(getField(r.Header, "Cache-Control"))
	switch {
	case !storableStatus(r.Status):
		return nil, "status " + strconv.Itoa(r.Status) + " is not cacheable"
	case cc.NoStore:
		return nil, "no-store"
	case cc.Private:
		return nil, "private"
	case hasAuthorization && !cc.Public && cc.SMaxAge < 0 && !cc.MustRevalidate:
		return nil, "request carried Authorization"
	case getField(r.Header, "Set-Cookie") != nil:
		// A response that sets a cookie is one client's; a shared copy
		// would hand that cookie to every fan.
		return nil, "Set-Cookie"
	}
	maxBytes := p.MaxEntryBytes
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEntryBytes
	}
	if len(r.Body) > maxBytes {
		return nil, "body larger than max_entry_bytes"
	}
	var vary []string
	for _, f := range r.Header {
		if !bytes.EqualFold(f.Key, []byte("Vary")) {
			continue
		}
		for _, name := range strings.Split(string(f.Value), ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "*" {
				return nil, "Vary: *"
			}
			if name != "" {
				vary = append(vary, name)
			}
		}
	}

	now := r.ResponseTime
	date := parseHTTPDate(getField(r.Header, "Date"))
	if date.IsZero() {
		date = now
	}
	var lifetime time.Duration
	switch {
	case cc.SMaxAge >= 0:
		lifetime = cc.SMaxAge
	case cc.MaxAge >= 0:
		lifetime = cc.MaxAge
	case getField(r.Header, "Expires") != nil:
		// An invalid Expires, such as "0", means already expired.
		if exp := parseHTTPDate(getField(r.Header, "Expires")); !exp.IsZero() {
			lifetime = max(0, exp.Sub(date))
		}
	default:
		lifetime = p.TTL
	}
	if p.MaxTTL > 0 && lifetime > p.MaxTTL {
		lifetime = p.MaxTTL
	}

	ageValue := time.Duration(0)
	if a := getField(r.Header, "Age"); a != nil {
		if s := seconds(bytes.TrimSpace(a)); s > 0 {
			ageValue = s
		}
	}
	apparentAge := max(0, now.Sub(date))
	correctedAge := ageValue + max(0, now.Sub(r.RequestTime))

	e = &Entry{
		Key:                 append([]byte(nil), key...),
		Hash:                hash,
		Status:              r.Status,
		Body:                append([]byte(nil), r.Body...),
		Vary:                vary,
		ResponseTime:        now,
		CorrectedInitialAge: max(apparentAge, correctedAge),
		Lifetime:            lifetime,
		NoCache:             cc.NoCache,
		MustRevalidate:      cc.MustRevalidate || cc.ProxyRevalidate || cc.SMaxAge >= 0,
		SWR:                 p.StaleWhileRevalidate,
		SIE:                 p.StaleIfError,
	}
	if cc.StaleWhileRevalidate >= 0 {
		e.SWR = cc.StaleWhileRevalidate
	}
	if cc.StaleIfError >= 0 {
		e.SIE = cc.StaleIfError
	}
	e.Header = copyStored(r.Header)
	e.ETag = e.Get("ETag")
	e.LastModified = e.Get("Last-Modified")
	return e, ""
}

func copyStored(h []Field) []Field {
	out := make([]Field, 0, len(h))
outer:
	for _, f := range h {
		for _, skip := range unstoredHeaders {
			if bytes.EqualFold(f.Key, []byte(skip)) {
				continue outer
			}
		}
		out = append(out, Field{Key: append([]byte(nil), f.Key...), Value: append([]byte(nil), f.Value...)})
	}
	return out
}

// Refreshed returns a copy of e updated by a 304 Not Modified (RFC 9111
// §4.3.4): the 304's header fields replace the stored ones of the same
// name, and freshness starts again from the 304.
func (p Policy) Refreshed(e *Entry, r Response) *Entry {
	merged := make([]Field, 0, len(e.Header)+len(r.Header))
	updated := copyStored(r.Header)
	for _, f := range e.Header {
		if getField(updated, string(f.Key)) == nil {
			merged = append(merged, f)
		}
	}
	merged = append(merged, updated...)
	full := Response{Status: e.Status, Header: merged, Body: e.Body, RequestTime: r.RequestTime, ResponseTime: r.ResponseTime}
	if ne, _ := p.Entry(e.Key, e.Hash, full, false); ne != nil {
		return ne
	}
	return nil // the 304 made it unstorable (say, no-store): drop it
}

func parseHTTPDate(b []byte) time.Time {
	if len(b) == 0 {
		return time.Time{}
	}
	t, err := http.ParseTime(string(b))
	if err != nil {
		return time.Time{}
	}
	return t
}
