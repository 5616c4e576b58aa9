package proxy

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// README, "Hot reload": "requests under way finish on the config they
// started with". A request is held at an upstream while a reload turns
// retries off (retries.max_retries 0) and renames its route; then it is
// answered 503. A request sent after the reload and answered 503 comes back
// 503 (the new config is in force), while the held one is retried on the
// other upstream, as its config says, and counted under its old route. The
// retry is decided after the answer, long after the reload, so a request
// that read the running config instead of its own would come back 503.
func TestReloadLeavesRequestsUnderWayOnTheirConfig(t *testing.T) {
	arrived := make(chan string, 4)
	release := make(chan struct{})
	var heldOnce atomic.Bool
	handler := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/held" && heldOnce.CompareAndSwap(false, true) {
			arrived <- r.URL.Path
			select {
			case <-release:
			case <-r.Context().Done(): // the edge gave up on it
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "held, then 503")
			return
		}
		if r.URL.Path == "/late" {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "late 503")
			return
		}
		io.WriteString(w, "retried")
	}
	u1, u2 := newUpstream(t), newUpstream(t)
	u1.handler, u2.handler = handler, handler
	e := startEdge(t, []*testUpstream{u1, u2}, nil, func(c *config.Edge) {
		c.Routes = []config.Route{{Name: "before", Match: config.Match{PathPrefix: "/"}}}
		c.Retries.MaxRetries = 1
		c.Timeouts.Upstream = config.Duration(30 * time.Second) // a hang guard
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
	wait := func(what string, ch <-chan answer) answer {
		t.Helper()
		select {
		case a := <-ch:
			return a
		case <-time.After(time.Minute): // a hang guard
			t.Fatalf("no answer to %s within a minute", what)
			return answer{}
		}
	}

	held := get("/held")
	select {
	case <-arrived:
	case <-time.After(time.Minute): // a hang guard
		t.Fatal("the held request never reached an upstream")
	}
	cfg := *e.p.Config()
	cfg.Routes = []config.Route{{Name: "after", Match: config.Match{PathPrefix: "/"}}}
	cfg.Retries.MaxRetries = 0
	if err := cfg.Validate("reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Reload(&cfg); err != nil {
		t.Fatal(err)
	}

	// The new config is in force for a request sent now: its 503 is not
	// retried.
	if a := wait("/late", get("/late")); a.err != nil || a.code != http.StatusServiceUnavailable || a.body != "late 503" {
		t.Fatalf("a request sent after the reload: %d %.60q %v, want the upstream's 503 passed on (max_retries 0)", a.code, a.body, a.err)
	}
	close(release)
	if a := wait("/held", held); a.err != nil || a.code != http.StatusOK || a.body != "retried" {
		t.Errorf("the request under way at the reload: %d %.60q %v, want 200 \"retried\": its 503 retried under the max_retries 1 it started with", a.code, a.body, a.err)
	}
	code200 := methodIndex([]byte("GET"))*codeSlots + 200 - 100
	if got := e.p.metrics.routeCounts("before").counts[code200].Load(); got != 1 {
		t.Errorf("requests{route=before,code=200} = %d, want 1: the held request counted under the route it started on", got)
	}
	if got := e.p.metrics.routeCounts("after").counts[code200].Load(); got != 0 {
		t.Errorf("requests{route=after,code=200} = %d, want 0", got)
	}
}
