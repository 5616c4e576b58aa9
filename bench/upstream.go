package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Upstream is the synthetic fixed-response origin used to measure pure
// proxy cost: every path answers 200 with the same Size-byte body, and GET
// /ping answers "pong" (the edge's health check). It does no work per
// request beyond HTTP itself, so whatever a proxy in front of it adds is
// the proxy's. /api/games (any query) answers a JSON listing instead, with
// a Cache-Control that lets a cache in front store it.
//
// Configure the fields, then call Serve once; not to be copied after.
type Upstream struct {
	// Size is the body length in bytes; 0 means an empty body.
	Size int
	// ListingSize is the length of the JSON body of /api/games (every
	// query), which is sent with ListingCacheControl so that caches in
	// front (Podium's, nginx proxy_cache, HAProxy's cache) store it for
	// the same time; 0 means Size.
	ListingSize         int
	ListingCacheControl string
	// Delay, when set, is slept before every answer but /ping (a slow
	// origin).
	Delay time.Duration
	// SlowEvery, when > 0, makes every SlowEvery-th answer (counted over
	// the upstream's requests) sleep SlowDelay first: SlowEvery 10 is 10%
	// of answers, deterministically spread, for retry and per-try timeout
	// measurements.
	SlowEvery int
	SlowDelay time.Duration

	requests atomic.Int64
}

// UpstreamStatsPath answers {"requests": N}: how many requests besides
// /ping and this one the upstream has answered, so the comparison can tell
// how many a cache in front let through.
const UpstreamStatsPath = "/bench/stats"

// listingBody returns a JSON array of games about size bytes long.
func listingBody(size int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for id := 1; b.Len() < size-120 || id == 1; id++ {
		if id > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"sport":"athletics","name":"Game %d","venue":"Stade","remaining":%d,"capacity":50000}`, id, id, 50000-id)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// Serve answers on every listener until ctx ends.
func (u *Upstream) Serve(ctx context.Context, lns ...net.Listener) error {
	body := bytes.Repeat([]byte("x"), u.Size)
	if u.Size > 0 {
		body[len(body)-1] = '\n'
	}
	ls := u.ListingSize
	if ls == 0 {
		ls = u.Size
	}
	listing := listingBody(ls)
	srv := &fasthttp.Server{
		Handler: func(c *fasthttp.RequestCtx) {
			path := c.Path()
			switch string(path) {
			case "/ping":
				c.SetContentType("text/plain")
				c.SetBodyString("pong")
				return
			case UpstreamStatsPath:
				c.SetContentType("application/json")
				fmt.Fprintf(c, `{"requests":%d}`, u.requests.Load())
				return
			}
			n := u.requests.Add(1)
			if u.Delay > 0 {
				time.Sleep(u.Delay)
			}
			if u.SlowEvery > 0 && n%int64(u.SlowEvery) == 0 {
				time.Sleep(u.SlowDelay)
			}
			if bytes.HasPrefix(path, []byte("/api/games")) {
				c.SetContentType("application/json")
				if u.ListingCacheControl != "" {
					c.Response.Header.Set("Cache-Control", u.ListingCacheControl)
				}
				c.SetBody(listing)
				return
			}
			c.SetContentType("application/octet-stream")
			c.SetBody(body)
		},
		Name:                          "podium-bench-upstream",
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: true,
		ReadTimeout:                   time.Minute,
		IdleTimeout:                   time.Minute,
	}
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- srv.Serve(ln)
		}()
	}
	select {
	case <-ctx.Done():
		err := srv.Shutdown()
		wg.Wait()
		return err
	case err := <-errc:
		_ = srv.Shutdown()
		wg.Wait()
		return fmt.Errorf("upstream: %w", err)
	}
}

// ListenAll opens one TCP listener per comma-separated address.
func ListenAll(addrs string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range strings.Split(addrs, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return nil, fmt.Errorf("upstream: listening on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	if len(lns) == 0 {
		return nil, errors.New("upstream: no listen address: pass -listen 127.0.0.1:9101[,127.0.0.1:9102]")
	}
	return lns, nil
}
