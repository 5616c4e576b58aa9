package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// muxOrigin is an upstream routed the way `podium origin` routes: a real
// Go ServeMux with the origin's patterns, which splits the path on raw
// slashes, unescapes each segment, and redirects (301) a path with dot
// segments or "//". Its 404s carry no Cache-Control, as the origin's do.
// It records the request-target of every request that reaches it. Its
// answers live a minute, not the origin's 2 s: the origin's whole-second
// Date can leave a 2 s copy fresh for barely one, and a busy machine could
// then see a HIT the test expects expire first.
type muxOrigin struct {
	*testUpstream
	mu      sync.Mutex
	targets []string
}

const muxListing = `{"games":[{"id":7},{"id":9}]}`

func newMuxOrigin(t *testing.T) *muxOrigin {
	o := &muxOrigin{testUpstream: newUpstream(t)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/games", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, muxListing)
	})
	mux.HandleFunc("GET /api/games/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"bad id"}`)
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=60")
		fmt.Fprintf(w, `{"id":%d}`, id)
	})
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		fmt.Fprintf(w, `{"error":"no such endpoint %s"}`, r.URL.Path)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(404)
		io.WriteString(w, "<h1>not found</h1>")
	})
	o.handler = func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.targets = append(o.targets, r.RequestURI)
		o.mu.Unlock()
		mux.ServeHTTP(w, r)
	}
	return o
}

// seen returns the request-targets received since the last call.
func (o *muxOrigin) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.targets
	o.targets = nil
	return s
}

// rawGET sends a GET with target exactly as given (Go's client would
// escape and clean it; curl --path-as-is does not) and reads the answer.
func rawGET(t *testing.T, addr, target string) result {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\nConnection: close\r\n\r\n", target, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %q: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, string(b), resp.Header}
}

// TestEncodedPathsNeverPoisonTheCache is issue 22's attack: a request whose
// path the edge and the origin read differently must neither reach the
// origin in another form than the one the edge keyed, nor leave anything
// but the real listing for the next fan. Each attack runs on an empty
// cache, so that it is the request that fills.
func TestEncodedPathsNeverPoisonTheCache(t *testing.T) {
	o := newMuxOrigin(t)
	e := cachingEdge(t, []*testUpstream{o.testUpstream})
	for _, tt := range pathAttacks {
		if !strings.HasPrefix(tt.raw, "/") {
			continue // not a request-target fasthttp accepts
		}
		e.p.store.PurgePrefix([]byte("/"))
		o.seen()
		attack := rawGET(t, e.addr, tt.raw)
		got := o.seen()
		if tt.err != nil {
			if attack.code != 400 || len(got) != 0 || !strings.Contains(attack.body, `"request_id"`) {
				t.Errorf("GET %q: %d %q, origin saw %q; want the edge's own 400, nothing forwarded", tt.raw, attack.code, attack.body, got)
			}
		} else {
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("GET %q: the origin saw %q, want exactly the normal form %q", tt.raw, got, tt.want)
			}
			if attack.code >= 300 && attack.code < 400 {
				// Go's ServeMux redirects a path that is not clean.
				t.Errorf("GET %q: %d to %q; the origin should never see a path it redirects", tt.raw, attack.code, attack.header.Get("Location"))
			}
		}
		if tt.want == "/api/games" && (attack.code != 200 || attack.body != muxListing) {
			t.Errorf("GET %q: %d %q, want the listing (its normal form is /api/games)", tt.raw, attack.code, attack.body)
		}
		// Another fan, right after.
		fan := do(t, "GET", e.url("/api/games"))
		if fan.code != 200 || fan.body != muxListing {
			t.Errorf("after GET %q: a fan's GET /api/games got %d %q X-Cache %q, want the listing", tt.raw, fan.code, fan.body, fan.header.Get("X-Cache"))
		}
	}
}

// TestForwardedTargetIsTheKey: what a cached route forwards is the key's
// request-target, the normalised path and the sorted query, so one key
// never stands for two requests the origin could tell apart.
func TestForwardedTargetIsTheKey(t *testing.T) {
	o := newMuxOrigin(t)
	e := cachingEdge(t, []*testUpstream{o.testUpstream})
	o.seen()
	r := rawGET(t, e.addr, "/%61pi/./games?sport=judo&&day=3&")
	if r.code != 200 {
		t.Fatalf("%d %q", r.code, r.body)
	}
	if got := o.seen(); len(got) != 1 || got[0] != "/api/games?day=3&sport=judo" {
		t.Errorf("origin saw %q, want [/api/games?day=3&sport=judo]", got)
	}
	if hit := rawGET(t, e.addr, "/api/games?day=3&sport=judo"); hit.header.Get("X-Cache") != "HIT" {
		t.Errorf("the same key in its normal form: X-Cache %q, want HIT", hit.header.Get("X-Cache"))
	}
	// An uncached route forwards the normalised path too.
	o.seen()
	rawGET(t, e.addr, "/api//games/7/../../other")
	if got := o.seen(); len(got) != 1 || got[0] != "/api/other" {
		t.Errorf("uncached route: origin saw %q, want [/api/other]", got)
	}
}

// TestErrorWithoutFreshnessNeverReplacesListing: a 404 the origin gives no
// lifetime is passed on, but not stored with the route's TTL, and it never
// becomes the copy stale-if-error serves.
func TestErrorWithoutFreshnessNeverReplacesListing(t *testing.T) {
	u := newUpstream(t)
	var mu sync.Mutex
	status, cc := 200, "public, max-age=0" // stored, stale at once: every request asks the origin
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s, c := status, cc
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if c != "" {
			w.Header().Set("Cache-Control", c)
		}
		w.WriteHeader(s)
		fmt.Fprintf(w, `{"status":%d}`, s)
	}
	set := func(s int, c string) { mu.Lock(); status, cc = s, c; mu.Unlock() }
	e := cachingEdge(t, []*testUpstream{u})
	if r := do(t, "GET", e.url("/api/games")); r.code != 200 {
		t.Fatalf("first listing: %d", r.code)
	}
	set(404, "")
	if r := do(t, "GET", e.url("/api/games")); r.code != 404 || r.header.Get("X-Cache") != "MISS" {
		t.Errorf("origin's 404: %d X-Cache %q, want it passed on as a MISS", r.code, r.header.Get("X-Cache"))
	}
	before := u.count.Load()
	r := do(t, "GET", e.url("/api/games"))
	if r.header.Get("X-Cache") == "HIT" || u.count.Load() != before+1 {
		t.Errorf("after a 404 without Cache-Control: %d X-Cache %q, origin asked %d times; want the origin asked, not a stored 404",
			r.code, r.header.Get("X-Cache"), u.count.Load()-before)
	}
	// Every origin fails: the last good copy is the 200, not the 404.
	set(503, "no-store")
	if r := do(t, "GET", e.url("/api/games")); r.code != 200 || r.header.Get("X-Cache") != "STALE" || r.body != `{"status":200}` {
		t.Errorf("origin failing: %d %q X-Cache %q, want the last 200 listing, STALE", r.code, r.body, r.header.Get("X-Cache"))
	}
	// A 404 the origin does give a lifetime is stored, as RFC 9111 lets it.
	set(404, "max-age=60")
	do(t, "GET", e.url("/api/games/404"))
	if r := do(t, "GET", e.url("/api/games/404")); r.code != 404 || r.header.Get("X-Cache") != "HIT" {
		t.Errorf("404 with max-age=60: %d X-Cache %q, want a HIT", r.code, r.header.Get("X-Cache"))
	}
}

// TestNotModifiedThatForbidsStoringStillAnswersInFull: when the edge
// revalidates and the origin's 304 says no-store, the client, who asked
// for the listing and not a conditional, gets the listing.
func TestNotModifiedThatForbidsStoringStillAnswersInFull(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(304)
			return
		}
		w.Header().Set("Cache-Control", "max-age=0")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"games":[]}`)
	}
	e := cachingEdge(t, []*testUpstream{u})
	do(t, "GET", e.url("/api/games"))
	for i := range 2 { // the leader, then again: nothing was stored by the 304
		r := do(t, "GET", e.url("/api/games"))
		if r.code != 200 || r.body != `{"games":[]}` || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("request %d after a no-store 304: %d %q Content-Type %q, want the listing", i, r.code, r.body, r.header.Get("Content-Type"))
		}
	}
}

// TestUnstoredErrorIsSharedWithWaiters: a 404 the origin gives no lifetime
// is not stored, but the requests that waited on the fetch that got it are
// answered with it: a flood of one unknown game id reaches the origin once
// per fetch, not once per request.
func TestUnstoredErrorIsSharedWithWaiters(t *testing.T) {
	u := newUpstream(t)
	release := newGate(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		<-release.ch
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		io.WriteString(w, `{"error":"no such game"}`)
	}
	e := cachingEdge(t, []*testUpstream{u})
	const n = 8
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := fetch("GET", e.url("/api/games/424242"))
			if err != nil {
				t.Error(err)
			}
			codes <- r.code
		}()
	}
	// Every request is in the edge (the first at the origin, the others
	// waiting on its fetch) before the origin answers.
	waitFor(t, "every request in the edge", func() bool { return e.p.active.Load() == n })
	release.open()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 404 {
			t.Errorf("a waiter got %d, want the origin's 404", c)
		}
	}
	// One fetch; a request counted in the edge but not yet waiting on the
	// fetch when it ended makes a second.
	if got := u.count.Load(); got > 2 {
		t.Errorf("origin saw %d requests for %d concurrent ones of one unknown id, want 1 (2 at most)", got, n)
	}
}
