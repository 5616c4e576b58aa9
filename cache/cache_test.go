package cache

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

var t0 = time.Date(2028, 7, 14, 18, 0, 0, 0, time.UTC)

func resp(status int, kv ...string) Response {
	r := Response{Status: status, Body: []byte("body"), RequestTime: t0, ResponseTime: t0}
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header = append(r.Header, Field{Key: []byte(kv[i]), Value: []byte(kv[i+1])})
	}
	return r
}

func TestStorability(t *testing.T) {
	p := Policy{TTL: 2 * time.Second}
	tests := []struct {
		name   string
		r      Response
		auth   bool
		reason string
	}{
		{"plain 200", resp(200), false, ""},
		// The route's TTL is a heuristic for 2xx only: an error or a
		// redirect is stored only when the origin gives it a lifetime, so
		// one odd request cannot store a 404 as every fan's listing.
		{"404 without explicit freshness", resp(404), false, "status 404 without explicit freshness"},
		{"301 without explicit freshness", resp(301, "Location", "/api/games"), false, "status 301 without explicit freshness"},
		{"404 with max-age", resp(404, "Cache-Control", "max-age=5"), false, ""},
		{"410 with Expires", resp(410, "Date", t0.Format(http.TimeFormat), "Expires", t0.Add(time.Minute).Format(http.TimeFormat)), false, ""},
		{"204 heuristically", resp(204), false, ""},
		{"no-store on a second Cache-Control line", resp(200, "Cache-Control", "public, max-age=60", "Cache-Control", "no-store"), false, "no-store"},
		{"private on a second Cache-Control line", resp(200, "Cache-Control", "max-age=60", "cache-control", "private"), false, "private"},
		{"500", resp(500), false, "status 500 is not cacheable"},
		{"201", resp(201), false, "status 201 is not cacheable"},
		{"no-store", resp(200, "Cache-Control", "max-age=60, no-store"), false, "no-store"},
		{"private", resp(200, "Cache-Control", "private, max-age=60"), false, "private"},
		{"Set-Cookie", resp(200, "Set-Cookie", "session=abc"), false, "Set-Cookie"},
		{"Authorization", resp(200, "Cache-Control", "max-age=60"), true, "request carried Authorization"},
		{"Authorization with public", resp(200, "Cache-Control", "public, max-age=60"), true, ""},
		{"Authorization with s-maxage", resp(200, "Cache-Control", "s-maxage=60"), true, ""},
		{"Vary star", resp(200, "Vary", "*"), false, "Vary: *"},
	}
	for _, tt := range tests {
		e, reason := p.Entry([]byte("k"), 1, tt.r, tt.auth)
		if reason != tt.reason || (e == nil) != (tt.reason != "") {
			t.Errorf("%s: reason %q (entry %v), want %q", tt.name, reason, e != nil, tt.reason)
		}
	}
	big := resp(200)
	big.Body = make([]byte, 10)
	if _, reason := (Policy{MaxEntryBytes: 5}).Entry([]byte("k"), 1, big, false); reason != "body larger than max_entry_bytes" {
		t.Errorf("oversized body: reason %q", reason)
	}
}

func TestLifetime(t *testing.T) {
	date := t0.Format(http.TimeFormat)
	tests := []struct {
		name string
		p    Policy
		r    Response
		want time.Duration
	}{
		{"route TTL when origin silent", Policy{TTL: 2 * time.Second}, resp(200), 2 * time.Second},
		{"max-age over TTL", Policy{TTL: 2 * time.Second}, resp(200, "Cache-Control", "max-age=30"), 30 * time.Second},
		{"s-maxage over max-age", Policy{}, resp(200, "Cache-Control", "max-age=30, s-maxage=5"), 5 * time.Second},
		{"Expires minus Date", Policy{TTL: time.Hour}, resp(200, "Date", date, "Expires", t0.Add(90*time.Second).Format(http.TimeFormat)), 90 * time.Second},
		{"invalid Expires is expired", Policy{TTL: time.Hour}, resp(200, "Expires", "0"), 0},
		{"max-age over Expires", Policy{}, resp(200, "Cache-Control", "max-age=7", "Expires", t0.Add(time.Hour).Format(http.TimeFormat)), 7 * time.Second},
		{"MaxTTL caps origin", Policy{MaxTTL: 3 * time.Second}, resp(200, "Cache-Control", "max-age=3600"), 3 * time.Second},
		{"bad max-age is stale", Policy{TTL: time.Hour}, resp(200, "Cache-Control", "max-age=abc"), 0},
		{"conflicting max-age is stale", Policy{TTL: time.Hour}, resp(200, "Cache-Control", "max-age=60, max-age=5"), 0},
		{"conflicting max-age across lines is stale", Policy{TTL: time.Hour}, resp(200, "Cache-Control", "max-age=60", "Cache-Control", "max-age=3600"), 0},
		{"repeated equal max-age", Policy{}, resp(200, "Cache-Control", "max-age=60", "Cache-Control", "max-age=60"), time.Minute},
		{"s-maxage on a second line", Policy{}, resp(200, "Cache-Control", "max-age=60", "Cache-Control", "s-maxage=9"), 9 * time.Second},
		{"404 keeps its own max-age, not the TTL", Policy{TTL: time.Hour}, resp(404, "Cache-Control", "max-age=5"), 5 * time.Second},
	}
	for _, tt := range tests {
		e, reason := tt.p.Entry([]byte("k"), 1, tt.r, false)
		if e == nil {
			t.Fatalf("%s: not stored: %s", tt.name, reason)
		}
		if e.Lifetime != tt.want {
			t.Errorf("%s: lifetime %v, want %v", tt.name, e.Lifetime, tt.want)
		}
	}
}

func TestAgeAndStaleness(t *testing.T) {
	p := Policy{TTL: 10 * time.Second, StaleIfError: time.Minute, StaleWhileRevalidate: 5 * time.Second}
	r := resp(200, "Date", t0.Add(-3*time.Second).Format(http.TimeFormat), "Age", "2")
	r.RequestTime = t0.Add(-1 * time.Second)
	e, _ := p.Entry([]byte("k"), 1, r, false)
	// apparent age 3s; corrected age value 2s + 1s delay = 3s → 3s initial.
	if got := e.Age(t0); got != 3*time.Second {
		t.Errorf("initial age %v, want 3s", got)
	}
	if got := e.Age(t0.Add(4 * time.Second)); got != 7*time.Second {
		t.Errorf("age after 4s %v, want 7s", got)
	}
	checks := []struct {
		at                  time.Duration
		fresh, swr, onError bool
	}{
		{6 * time.Second, true, true, true},
		{8 * time.Second, false, true, true},    // age 11s: stale, within 5s SWR
		{13 * time.Second, false, false, true},  // age 16s: past SWR, within SIE
		{70 * time.Second, false, false, false}, // age 73s: past SIE
	}
	for _, c := range checks {
		now := t0.Add(c.at)
		if e.Fresh(now) != c.fresh || e.ServeWhileRevalidating(now) != c.swr || e.ServeOnError(now) != c.onError {
			t.Errorf("at +%v: fresh %v swr %v onError %v, want %v %v %v", c.at, e.Fresh(now), e.ServeWhileRevalidating(now), e.ServeOnError(now), c.fresh, c.swr, c.onError)
		}
	}
	mr, _ := p.Entry([]byte("k"), 1, resp(200, "Cache-Control", "max-age=1, must-revalidate"), false)
	if mr.ServeOnError(t0.Add(2*time.Second)) || mr.ServeWhileRevalidating(t0.Add(2*time.Second)) {
		t.Error("must-revalidate entry may be served stale")
	}
	sm, _ := p.Entry([]byte("k"), 1, resp(200, "Cache-Control", "s-maxage=1"), false)
	if sm.ServeOnError(t0.Add(2 * time.Second)) {
		t.Error("s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10), but the entry may be served stale")
	}
	nc, _ := p.Entry([]byte("k"), 1, resp(200, "Cache-Control", "no-cache, max-age=60"), false)
	if nc.Fresh(t0) {
		t.Error("no-cache entry counted fresh")
	}
	own, _ := p.Entry([]byte("k"), 1, resp(200, "Cache-Control", "max-age=1, stale-if-error=5"), false)
	if own.ServeOnError(t0.Add(7 * time.Second)) {
		t.Error("the response's own stale-if-error=5 did not override the route's minute")
	}
}

func TestRefreshed(t *testing.T) {
	p := Policy{TTL: time.Second}
	e, _ := p.Entry([]byte("k"), 1, resp(200, "ETag", `"v1"`, "Cache-Control", "max-age=1", "Content-Type", "application/json", "Set-Cookie2", "x"), false)
	r304 := resp(304, "ETag", `"v1"`, "Cache-Control", "max-age=5")
	r304.RequestTime, r304.ResponseTime = t0.Add(10*time.Second), t0.Add(10*time.Second)
	ne := p.Refreshed(e, r304)
	if ne == nil || !ne.Fresh(t0.Add(14*time.Second)) || ne.Fresh(t0.Add(16*time.Second)) {
		t.Fatalf("refreshed entry %+v: want fresh for 5s from the 304", ne)
	}
	if string(ne.Get("Content-Type")) != "application/json" || string(ne.Body) != "body" {
		t.Errorf("refresh lost the stored headers or body")
	}
	if string(ne.Get("Cache-Control")) != "max-age=5" {
		t.Errorf("Cache-Control %q, want the 304's", ne.Get("Cache-Control"))
	}
}

func TestKey(t *testing.T) {
	tests := []struct{ path, query, host, want string }{
		{"/api/games", "", "Edge.Example", "/api/games\x00edge.example"},
		{"/api/games", "b=2&a=1", "h", "/api/games?a=1&b=2\x00h"},
		{"/api/games", "a=1&&b=2&", "h", "/api/games?a=1&b=2\x00h"},
		// Only empty parameters: no query, so the key's target is what
		// the edge forwards for it.
		{"/api/games", "&&", "h", "/api/games\x00h"},
		{"/api/games", "sport=x&sport=a", "h", "/api/games?sport=x&sport=a\x00h"},
		// Past 16 parameters the query is kept whole, as sent.
		{"/p", "q=1&p=1&o=1&n=1&m=1&l=1&k=1&j=1&i=1&h=1&g=1&f=1&e=1&d=1&c=1&b=1&a=1", "h", "/p?q=1&p=1&o=1&n=1&m=1&l=1&k=1&j=1&i=1&h=1&g=1&f=1&e=1&d=1&c=1&b=1&a=1\x00h"},
	}
	for _, tt := range tests {
		if got := string(AppendKey(nil, []byte(tt.path), []byte(tt.query), []byte(tt.host))); got != tt.want {
			t.Errorf("AppendKey(%s?%s, %s) = %q, want %q", tt.path, tt.query, tt.host, got, tt.want)
		}
	}
	hdr := map[string]string{"accept-encoding": " gzip "}
	v := AppendVariant([]byte("base"), []string{"accept-encoding"}, func(n string) []byte { return []byte(hdr[n]) })
	if string(v) != "base\x01accept-encoding:gzip" {
		t.Errorf("variant key %q", v)
	}
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendKey(buf[:0], []byte("/api/games"), []byte("b=2&a=1"), []byte("edge"))
	}); n != 0 {
		t.Errorf("AppendKey allocates %v times", n)
	}
}

// storeNow stores e through a fill that no purge touched.
func storeNow(s *Store, e *Entry) bool {
	f := s.BeginFill(e.Key)
	defer s.EndFill(f)
	return s.Set(e, f)
}

func TestStore(t *testing.T) {
	s, err := NewStore(1<<20, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := Policy{TTL: time.Second}
	mk := func(k string) *Entry {
		e, _ := p.Entry([]byte(k), Hash([]byte(k)), resp(200), false)
		return e
	}
	a := mk("/api/games\x00h")
	if !storeNow(s, a) {
		t.Fatal("set refused")
	}
	if s.Get(a.Hash, a.Key) != a {
		t.Fatal("stored entry not found")
	}
	if s.Get(a.Hash, []byte("other")) != nil {
		t.Error("a key with the same hash but other bytes hit")
	}
	// A fill that started before a purge of its path is not stored.
	b := mk("/games\x00h")
	f := s.BeginFill(b.Key)
	s.PurgePrefix([]byte("/gam"))
	if s.Set(b, f) || s.Get(b.Hash, b.Key) != nil {
		t.Error("a fill from before a purge was stored")
	}
	s.EndFill(f)
	for i := range 3 {
		storeNow(s, mk(fmt.Sprintf("/api/games/%d\x00h", i)))
	}
	if n := s.PurgePrefix([]byte("/api/games")); n != 4 {
		t.Errorf("purged %d, want 4", n)
	}
	if s.Get(a.Hash, a.Key) != nil {
		t.Error("purged entry still served")
	}
	// Last good: FIFO bounded to 2 entries, kept across purges.
	if e, _ := s.LastGood(a.Hash, a.Key); e != nil {
		t.Error("lastGood kept more than its 2 entries")
	}
	last := mk("/api/games/2\x00h")
	if e, purged := s.LastGood(last.Hash, last.Key); e == nil || !purged {
		t.Errorf("the newest last-good copy: %v purged %v, want kept and marked purged", e != nil, purged)
	}
	storeNow(s, last)
	if _, purged := s.LastGood(last.Hash, last.Key); purged {
		t.Error("a new fill did not clear the purge mark")
	}
	if st := s.Stats(); st.LastGoodEntries != 2 {
		t.Errorf("stats %+v, want 2 last-good entries", st)
	}
}

// TestPurgeIsPerPath: a purge of one path drops that path's fill in flight
// and leaves another path's fill to store: with one purge generation for
// the whole store, every purchase would discard every fill in flight.
func TestPurgeIsPerPath(t *testing.T) {
	s, err := NewStore(1<<20, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := Policy{TTL: time.Hour}
	mk := func(k string) *Entry {
		e, _ := p.Entry([]byte(k), Hash([]byte(k)), resp(200), false)
		return e
	}
	seven, nine := mk("/api/games/7\x00h"), mk("/api/games/9\x00h")
	sevenQ := mk("/api/games/7?x=1\x00h")
	seventy := mk("/api/games/70\x00h")
	storeNow(s, seventy)

	f7, f9, f7q := s.BeginFill(seven.Key), s.BeginFill(nine.Key), s.BeginFill(sevenQ.Key)
	s.PurgePath([]byte("/api/games/7")) // a purchase of game 7, while all three fetch
	if s.Set(seven, f7) || s.Get(seven.Hash, seven.Key) != nil {
		t.Error("the purged path's fill, begun before the purge, was stored")
	}
	if s.Set(sevenQ, f7q) || s.Get(sevenQ.Hash, sevenQ.Key) != nil {
		t.Error("a fill of another query of the purged path was stored")
	}
	if !s.Set(nine, f9) || s.Get(nine.Hash, nine.Key) != nine {
		t.Error("a purge of /api/games/7 dropped the fill of /api/games/9")
	}
	if s.Get(seventy.Hash, seventy.Key) != seventy {
		t.Error("a purge of the path /api/games/7 removed /api/games/70")
	}
	for _, f := range []*Fill{f7, f9, f7q} {
		s.EndFill(f)
	}
	// A fill begun after the purge stores.
	if !storeNow(s, seven) || s.Get(seven.Hash, seven.Key) != seven {
		t.Error("a fill begun after the purge was not stored")
	}
	// A prefix purge reaches fills and entries of every path under it.
	f9 = s.BeginFill(nine.Key)
	if n := s.PurgePrefix([]byte("/api/games/")); n != 3 {
		t.Errorf("prefix purge removed %d entries, want 3 (7, 9, 70)", n)
	}
	if s.Set(nine, f9) {
		t.Error("a prefix purge did not stop a fill under it")
	}
	s.EndFill(f9)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.paths) != 3 || len(s.entries) != 0 {
		// Left: the last-good copies of 7, 9 and 70 (marked), nothing cached.
		t.Errorf("index holds %d paths and %d entries after the purges, want 3 and 0", len(s.paths), len(s.entries))
	}
}

// TestLastGoodIsSuccessful: an error the origin gave a lifetime may be
// stored, but it never becomes the last good copy, and it retires the 200
// that was (stale-if-error must not serve a 404 as "the last good
// listing", nor a 200 the origin has since contradicted as fresh).
func TestLastGoodIsSuccessful(t *testing.T) {
	s, err := NewStore(1<<20, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := []byte("/api/games\x00h")
	ok, _ := Policy{TTL: time.Second}.Entry(k, Hash(k), resp(200), false)
	storeNow(s, ok)
	if lg, _ := s.LastGood(ok.Hash, k); lg != ok {
		t.Fatal("a 200 did not become the last good copy")
	}
	nf, _ := Policy{TTL: time.Second}.Entry(k, Hash(k), resp(404, "Cache-Control", "max-age=5"), false)
	if nf == nil {
		t.Fatal("a 404 with max-age was not storable")
	}
	storeNow(s, nf)
	if lg, _ := s.LastGood(ok.Hash, k); lg != nil {
		t.Errorf("last good copy after a stored 404 is status %d, want none", lg.Status)
	}
	if st := s.Stats(); st.LastGoodEntries != 0 || st.LastGoodBytes != 0 {
		t.Errorf("stats %+v, want no last-good copies", st)
	}
	storeNow(s, ok)
	if lg, _ := s.LastGood(ok.Hash, k); lg != ok {
		t.Error("a 200 after the 404 did not become the last good copy")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) != 1 {
		t.Errorf("the last-good FIFO holds %d hashes for one key", len(s.order))
	}
}

// TestIndexFollowsEvictions: entries ristretto evicts leave the path index,
// so its memory is bounded by the cache's, whatever keys clients invent.
func TestIndexFollowsEvictions(t *testing.T) {
	s, err := NewStore(64<<10, 10, 1<<20) // room for a few dozen 1 KiB entries
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := Policy{TTL: time.Hour}
	for i := range 2000 {
		k := []byte(fmt.Sprintf("/api/games?x=%d\x00h", i))
		r := resp(200)
		r.Body = make([]byte, 1024)
		e, _ := p.Entry(k, Hash(k), r, false)
		storeNow(s, e)
	}
	s.PurgePath([]byte("/nothing")) // drains the queue of evictions
	s.mu.Lock()
	n := len(s.entries)
	cached := 0
	if pi := s.paths["/api/games"]; pi != nil {
		cached = len(pi.cached)
	}
	s.mu.Unlock()
	if n > 100 || cached != n {
		t.Errorf("index holds %d entries (%d under the path) after 2,000 fills into room for ~60", n, cached)
	}
}
