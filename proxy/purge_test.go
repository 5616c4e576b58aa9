package proxy

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPurchasePurgesOnlyItsOwnFills is issue 22 item 8: a purchase of game
// 7 while the edge fetches games 7 and 9 drops the fill of game 7 (it read
// the seats before the purchase) and stores the fill of game 9. With one
// purge generation for the whole cache, every purchase discarded every
// fill in flight, and under a buy storm the cache stopped filling.
func TestPurchasePurgesOnlyItsOwnFills(t *testing.T) {
	u := newUpstream(t)
	var seats atomic.Int64
	seats.Store(500)
	gates := map[string]chan struct{}{"/api/games/7": make(chan struct{}), "/api/games/9": make(chan struct{})}
	arrived := make(chan string, len(gates))
	var once sync.Map
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/buy") {
			seats.Add(-1)
			w.WriteHeader(201)
			io.WriteString(w, `{"tickets":[1]}`)
			return
		}
		// The answer is what the database said when the request came in.
		body := fmt.Sprintf(`{"path":%q,"remaining":%d}`, r.URL.Path, seats.Load())
		if g := gates[r.URL.Path]; g != nil {
			if _, again := once.LoadOrStore(r.URL.Path, true); !again {
				arrived <- r.URL.Path
			}
			<-g
		}
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}
	e := cachingEdge(t, []*testUpstream{u})

	var wg sync.WaitGroup
	for path := range gates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := fetch("GET", e.url(path)); err != nil || r.code != 200 {
				t.Errorf("fill of %s: %d %q %v", path, r.code, r.body, err)
			}
		}()
	}
	for range gates { // both fills have read the seats and wait
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the fills did not reach the origin")
		}
	}
	if r := do(t, "POST", e.url("/api/games/7/buy")); r.code != 201 {
		t.Fatalf("buy: %d %q", r.code, r.body)
	}
	for _, g := range gates {
		close(g)
	}
	wg.Wait()

	before := u.count.Load()
	if r := do(t, "GET", e.url("/api/games/9")); r.header.Get("X-Cache") != "HIT" || r.body != `{"path":"/api/games/9","remaining":500}` {
		t.Errorf("/api/games/9 after a purchase of game 7: %q X-Cache %q, want its fill stored (HIT)", r.body, r.header.Get("X-Cache"))
	}
	if r := do(t, "GET", e.url("/api/games/7")); r.header.Get("X-Cache") != "MISS" || r.body != `{"path":"/api/games/7","remaining":499}` {
		t.Errorf("/api/games/7 after its purchase: %q X-Cache %q, want the fill from before the purchase dropped and the new count fetched", r.body, r.header.Get("X-Cache"))
	}
	if got := u.count.Load() - before; got != 1 {
		t.Errorf("origin asked %d times, want 1 (game 7 only)", got)
	}
}

// pageOrigin answers every GET with a cacheable page naming its path and
// the seats left, and every other method with the status, Location and
// Content-Location the request asks for (X-Status, 201 by default;
// X-Location; X-Content-Location), a 2xx selling a seat. It counts the GETs
// of each path, so a test sees which pages the edge fetched again.
type pageOrigin struct {
	*testUpstream
	seats atomic.Int64
	mu    sync.Mutex
	gets  map[string]int
}

func newPageOrigin(t *testing.T) *pageOrigin {
	o := &pageOrigin{testUpstream: newUpstream(t), gets: map[string]int{}}
	o.seats.Store(500)
	o.handler = func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			o.mu.Lock()
			o.gets[r.URL.Path]++
			o.mu.Unlock()
			w.Header().Set("Cache-Control", "public, max-age=60") // long: only a purge makes the edge ask again
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"path":%q,"remaining":%d}`, r.URL.Path, o.seats.Load())
			return
		}
		status := 201
		if s := r.Header.Get("X-Status"); s != "" {
			status, _ = strconv.Atoi(s)
		}
		if l := r.Header.Get("X-Location"); l != "" {
			w.Header().Set("Location", l)
		}
		if l := r.Header.Get("X-Content-Location"); l != "" {
			w.Header().Set("Content-Location", l)
		}
		if status >= 200 && status < 300 {
			o.seats.Add(-1)
		}
		w.WriteHeader(status)
		io.WriteString(w, `{}`)
	}
	return o
}

func (o *pageOrigin) fetched() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.gets)
}

// gamePages are the cached pages a purchase of game 7 may touch: the
// listing and game 7's pages, in both forms, and game 8's, which it must
// not.
var gamePages = []string{"/api/games", "/games", "/api/games/7", "/games/7", "/api/games/8", "/games/8"}

// warm makes sure every page is in the cache: a HIT on its second GET.
func warm(t *testing.T, e *testEdge, pages []string) {
	t.Helper()
	for _, p := range pages {
		do(t, "GET", e.url(p))
		if r := do(t, "GET", e.url(p)); r.code != 200 || r.header.Get("X-Cache") != "HIT" {
			t.Fatalf("warming %s: %d X-Cache %q, want a HIT on the second GET", p, r.code, r.header.Get("X-Cache"))
		}
	}
}

// checkPurged asks for every page once and checks that exactly the purged
// ones were fetched again (MISS, one more GET at the origin, the seats the
// origin has now) and the rest came from the cache (HIT, no GET). The
// pages it fetched again are cached once more when it returns.
func checkPurged(t *testing.T, e *testEdge, o *pageOrigin, what string, pages []string, purged ...string) {
	t.Helper()
	before := o.fetched()
	for _, p := range pages {
		r := do(t, "GET", e.url(p))
		after := o.fetched()[p]
		if slices.Contains(purged, p) {
			want := fmt.Sprintf(`{"path":%q,"remaining":%d}`, p, o.seats.Load())
			if r.header.Get("X-Cache") != "MISS" || after != before[p]+1 || r.body != want {
				t.Errorf("%s: %s %q X-Cache %q, origin asked %d times, want it purged: fetched again (MISS) with %s",
					what, p, r.body, r.header.Get("X-Cache"), after-before[p], want)
			}
		} else if r.header.Get("X-Cache") != "HIT" || after != before[p] {
			t.Errorf("%s: %s X-Cache %q, origin asked %d times, want it left alone (a HIT)", what, p, r.header.Get("X-Cache"), after-before[p])
		}
	}
}

// TestPurchasePurgesListingAndGamePages: a purchase, by the API (route
// buy) or the page form (route buy_page), purges the listing in both forms
// and that game's pages in both forms, and nothing else: the default
// routes' purge lists.
func TestPurchasePurgesListingAndGamePages(t *testing.T) {
	for _, tt := range []struct{ route, buy string }{
		{"buy", "/api/games/7/buy"},
		{"buy_page", "/games/7/buy"},
	} {
		t.Run(tt.route, func(t *testing.T) {
			o := newPageOrigin(t)
			e := cachingEdge(t, []*testUpstream{o.testUpstream})
			warm(t, e, gamePages)
			if r := do(t, "POST", e.url(tt.buy)); r.code != 201 {
				t.Fatalf("POST %s: %d %q, want the origin's 201", tt.buy, r.code, r.body)
			}
			checkPurged(t, e, o, "after POST "+tt.buy, gamePages, "/api/games", "/games", "/api/games/7", "/games/7")
		})
	}
}

// TestFailedPurchasePurgesNothing: a purchase the origin refuses (4xx) or
// fails (5xx) changed nothing, so it purges nothing; the same purchase
// answered 201 then does.
func TestFailedPurchasePurgesNothing(t *testing.T) {
	o := newPageOrigin(t)
	e := cachingEdge(t, []*testUpstream{o.testUpstream})
	warm(t, e, gamePages)
	for _, tt := range []struct {
		buy    string
		status int
	}{
		{"/api/games/7/buy", 400},
		{"/api/games/7/buy", 409}, // sold out
		{"/games/7/buy", 403},     // the form's token refused
		{"/games/7/buy", 422},
		{"/api/games/7/buy", 500},
		{"/games/7/buy", 503},
	} {
		what := fmt.Sprintf("POST %s answered %d", tt.buy, tt.status)
		if r := do(t, "POST", e.url(tt.buy), "X-Status", strconv.Itoa(tt.status)); r.code != tt.status {
			t.Fatalf("%s: the client got %d %q", what, r.code, r.body)
		}
		checkPurged(t, e, o, what, gamePages)
	}
	if r := do(t, "POST", e.url("/games/7/buy")); r.code != 201 {
		t.Fatalf("POST /games/7/buy: %d %q, want 201", r.code, r.body)
	}
	checkPurged(t, e, o, "POST /games/7/buy answered 201", gamePages, "/api/games", "/games", "/api/games/7", "/games/7")
}

// TestUnsafeRequestPurgesItsTargetAndLocation: on a route without a purge
// list, an unsafe request answered 2xx purges its own path and the path of
// a Location or Content-Location on the same host (RFC 9111 §4.4), in its
// normal form; another host's is left alone, as is everything after a
// 4xx, and a safe method's 2xx purges nothing.
func TestUnsafeRequestPurgesItsTargetAndLocation(t *testing.T) {
	o := newPageOrigin(t)
	e := cachingEdge(t, []*testUpstream{o.testUpstream})
	for _, tt := range []struct {
		name, method, path string
		hdr                []string
		purged             []string
	}{
		{"own path", "POST", "/api/games/8", nil, []string{"/api/games/8"}},
		{"own path, DELETE", "DELETE", "/games/8", nil, []string{"/games/8"}},
		{"Location, relative", "POST", "/api/orders", []string{"X-Location", "/api/games/7"}, []string{"/api/games/7"}},
		{"Location with a query", "POST", "/api/orders", []string{"X-Location", "/games?sport=judo"}, []string{"/games"}},
		{"Location, dot segments", "POST", "/api/orders", []string{"X-Location", "/api/games/9/../7"}, []string{"/api/games/7"}},
		{"Content-Location, absolute, this host", "PUT", "/api/orders/1", []string{"X-Content-Location", "http://" + e.addr + "/games/7"}, []string{"/games/7"}},
		{"both", "POST", "/api/orders", []string{"X-Location", "/api/games", "X-Content-Location", "http://" + strings.ToUpper(e.addr) + "/games"}, []string{"/api/games", "/games"}},
		{"Location, another host", "POST", "/api/orders", []string{"X-Location", "http://elsewhere.example/api/games"}, nil},
		{"Location, another host, scheme-relative", "POST", "/api/orders", []string{"X-Location", "//elsewhere.example/games/7"}, nil},
		{"Location, host api, scheme-relative", "POST", "/api/orders", []string{"X-Location", "//api/games"}, nil}, // not the path //api/games
		{"Content-Location, another host", "POST", "/api/orders", []string{"X-Content-Location", "https://elsewhere.example/api/games/8"}, nil},
		{"Location on a 409", "POST", "/api/games/8", []string{"X-Status", "409", "X-Location", "/api/games"}, nil},
		{"Location on a 500", "DELETE", "/api/games/8", []string{"X-Status", "500", "X-Location", "/api/games"}, nil},
		// RFC 9110 §9.2.1: OPTIONS and TRACE are safe. A CORS preflight
		// answered 204 must not purge the listing it asks about.
		{"OPTIONS answered 204", "OPTIONS", "/api/games", []string{"X-Status", "204", "X-Location", "/games"}, nil},
		{"TRACE answered 200", "TRACE", "/games/7", []string{"X-Status", "200", "X-Content-Location", "/api/games/7"}, nil},
	} {
		warm(t, e, gamePages)
		r := do(t, tt.method, e.url(tt.path), tt.hdr...)
		if r.code >= 300 && len(tt.purged) > 0 {
			t.Fatalf("%s: %s %s got %d %q", tt.name, tt.method, tt.path, r.code, r.body)
		}
		checkPurged(t, e, o, tt.name, gamePages, tt.purged...)
	}
}
