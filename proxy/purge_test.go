package proxy

import (
	"fmt"
	"io"
	"net/http"
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
			if r := do(t, "GET", e.url(path)); r.code != 200 {
				t.Errorf("fill of %s: %d %q", path, r.code, r.body)
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
