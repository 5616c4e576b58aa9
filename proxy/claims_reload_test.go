package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// README, "Hot reload": "requests under way finish on the config they
// started with". A request held at the upstream while a reload shortens
// timeouts.upstream and renames its route is answered 200 under the old
// 30 s timeout and counted under the old route, although a request sent
// after the reload, held the same way, has already timed out under the new
// one: the held request, older, would have timed out first had it read the
// new config.
func TestReloadLeavesRequestsUnderWayOnTheirConfig(t *testing.T) {
	u := newUpstream(t)
	arrived := make(chan string, 2)
	release := make(chan struct{})
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		select {
		case <-release:
			io.WriteString(w, "released")
		case <-r.Context().Done(): // the edge gave up on it
		}
	}
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Routes = []config.Route{{Name: "before", Match: config.Match{PathPrefix: "/"}}}
		c.Timeouts.Upstream = config.Duration(30 * time.Second) // a hang guard, too
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	client := &http.Client{Timeout: time.Minute} // a hang guard; the edge's timeouts decide
	type answer struct {
		code int
		body string
		err  error
	}
	get := func(path string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			resp, err := client.Get(e.url(path))
			if err != nil {
				ch <- answer{err: err}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- answer{code: resp.StatusCode, body: string(b)}
		}()
		return ch
	}

	held := get("/held")
	if p := <-arrived; p != "/held" {
		t.Fatalf("upstream got %s first, want /held", p)
	}
	cfg := *e.p.Config()
	cfg.Routes = []config.Route{{Name: "after", Match: config.Match{PathPrefix: "/"}}}
	cfg.Timeouts.Upstream = config.Duration(200 * time.Millisecond)
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}

	// The new config is in force for a request sent now: it times out.
	late := get("/late")
	if p := <-arrived; p != "/late" {
		t.Fatalf("upstream got %s, want /late", p)
	}
	if a := <-late; a.err != nil || a.code != http.StatusGatewayTimeout {
		t.Fatalf("a request sent after the reload: %d %.60q %v, want 504 under the new 200ms timeouts.upstream", a.code, a.body, a.err)
	}
	close(release)
	if a := <-held; a.err != nil || a.code != http.StatusOK || a.body != "released" {
		t.Errorf("the request under way at the reload: %d %.60q %v, want 200 \"released\" under the 30 s timeout it started with", a.code, a.body, a.err)
	}
	code200 := methodIndex([]byte("GET"))*codeSlots + 200 - 100
	if got := e.p.metrics.routeCounts("before").counts[code200].Load(); got != 1 {
		t.Errorf("requests{route=before,code=200} = %d, want 1: the held request counted under the route it started on", got)
	}
	if got := e.p.metrics.routeCounts("after").counts[code200].Load(); got != 0 {
		t.Errorf("requests{route=after,code=200} = %d, want 0", got)
	}
}
