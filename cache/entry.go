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

// Successful reports whether the entry is a 2xx answer: only these get the
// route's TTL as a heuristic lifetime and only these are kept as the
// last good copy that stale-if-error serves.
func (e *Entry) Successful() bool { return e.Status >= 200 && e.Status < 300 }

// unstoredHeaders are never kept in an entry: hop-by-hop ones, Age (the
// edge computes its own), Set-Cookie (a response with it is not stored at
// all), and the edge's own X-Cache.
var unstoredHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Te", "Trailer", "Upgrade", "Age", "X-Cache", "Set-Cookie"}

// Entry decides whether r may be stored under key (RFC 9111 §3) and, if so,
// builds the entry. When it may not, reason says why (for logs and tests).
// hasAuthorization is whether the request carried Authorization.
func (p Policy) Entry(key []byte, hash uint64, r Response, hasAuthorization bool) (e *Entry, reason string) {
	cc := controlOf(r.Header)
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
	vary, star := varyOf(r.Header)
	if star {
		return nil, "Vary: *"
	}

	now := r.ResponseTime
	date := parseHTTPDate(getField(r.Header, "Date"))
	if date.IsZero() {
		date = now
	}
	lifetime, explicit := explicitLifetime(cc, r.Header, date)
	if !explicit {
		// The route's ttl is a heuristic (RFC 9111 §4.2.2) written for
		// listings. Given to an error, it would let one request whose path
		// the origin reads differently store a 404 as the listing for every
		// fan; an origin that wants a 404 or a redirect cached says so with
		// max-age, s-maxage or Expires.
		if r.Status < 200 || r.Status >= 300 {
			return nil, "status " + strconv.Itoa(r.Status) + " without explicit freshness"
		}
		lifetime = p.TTL
	}
	if p.MaxTTL > 0 && lifetime > p.MaxTTL {
		lifetime = p.MaxTTL
	}

	apparentAge := max(0, now.Sub(date))
	correctedAge := ageOf(r.Header) + max(0, now.Sub(r.RequestTime))

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

// explicitLifetime is the freshness lifetime the origin gave (RFC 9111
// §4.2.1): s-maxage over max-age over Expires − Date. explicit is false
// when it gave none.
func explicitLifetime(cc Control, h []Field, date time.Time) (lifetime time.Duration, explicit bool) {
	switch {
	case cc.SMaxAge >= 0:
		return cc.SMaxAge, true
	case cc.MaxAge >= 0:
		return cc.MaxAge, true
	}
	exp := getField(h, "Expires")
	if exp == nil {
		return 0, false
	}
	// An invalid Expires, such as "0", means already expired.
	if t := parseHTTPDate(exp); !t.IsZero() {
		return max(0, t.Sub(date)), true
	}
	return 0, true
}

// ageOf is the Age field's value (RFC 9111 §5.1), 0 when absent or
// invalid. delta-seconds past 2^31 are 2^31.
func ageOf(h []Field) time.Duration {
	a := getField(h, "Age")
	if a == nil {
		return 0
	}
	return max(0, seconds(bytes.TrimSpace(a)))
}

// varyOf lists the request header names every Vary field line names,
// lower-cased; star is true when one of them is "*" (RFC 9110 §12.5.5: the
// response varies on something no request header says, so no stored copy
// can be reused).
func varyOf(h []Field) (names []string, star bool) {
	for _, f := range h {
		if !bytes.EqualFold(f.Key, []byte("Vary")) {
			continue
		}
		for _, name := range strings.Split(string(f.Value), ",") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name == "*" {
				return nil, true
			}
			if name != "" {
				names = append(names, name)
			}
		}
	}
	return names, false
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
// name, and freshness starts again from the 304. It returns nil when the
// updated response may not be stored (the 304 said no-store, say); the
// client is then still owed the whole response, which NotModified gives.
func (p Policy) Refreshed(e *Entry, r Response) *Entry {
	if ne, _ := p.Entry(e.Key, e.Hash, NotModified(e, r), false); ne != nil {
		return ne
	}
	return nil
}

// NotModified is the response a 304 Not Modified for stored entry e
// stands for: e's status and body, its header fields updated by the 304's.
func NotModified(e *Entry, r Response) Response {
	merged := make([]Field, 0, len(e.Header)+len(r.Header))
	updated := copyStored(r.Header)
	for _, f := range e.Header {
		if getField(updated, string(f.Key)) == nil {
			merged = append(merged, f)
		}
	}
	merged = append(merged, updated...)
	return Response{Status: e.Status, Header: merged, Body: e.Body, RequestTime: r.RequestTime, ResponseTime: r.ResponseTime}
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
