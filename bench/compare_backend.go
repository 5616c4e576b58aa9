package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// backend is what the proxies forward to in a scenario: the synthetic
// upstream or the origins.
type backend struct {
	addrs []string
	procs []*child
	// stats is true when addrs[0] answers UpstreamStatsPath.
	stats bool
	// readyPath and readyLen say what a proxy must answer before it is
	// measured: 200 with readyLen bytes (-1: any length).
	readyPath string
	readyLen  int
}

func (b *backend) pids() []int {
	var pids []int
	for _, p := range b.procs {
		pids = append(pids, processTree(p.cmd.Process.Pid)...)
	}
	return pids
}

func (b *backend) stop() {
	for _, p := range b.procs {
		p.stop()
	}
}

func (c *comparison) startUpstreams(ctx context.Context) (*backend, error) {
	be := &backend{stats: true, readyPath: "/bench/payload", readyLen: c.opts.BodySize}
	for i := 0; i < c.opts.Upstreams; i++ {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		be.addrs = append(be.addrs, a)
	}
	argv := append(append([]string{}, c.opts.Exe...), "upstream", "-listen", strings.Join(be.addrs, ","), "-size", strconv.Itoa(c.opts.BodySize))
	ch, err := c.start("upstream", c.opts.LoadCPU, c.opts.Env, argv...)
	if err != nil {
		return nil, err
	}
	be.procs = []*child{ch}
	for _, a := range be.addrs {
		if err := waitReady(ctx, ch, "http://"+a+"/ping", 4, 10*time.Second); err != nil {
			ch.stop()
			return nil, fmt.Errorf("synthetic upstream: %w", err)
		}
	}
	return be, nil
}

// startOrigins starts two `podium origin` on the load CPU. They read their
// database DSNs from the PODIUM_DB_* environment this process was given
// (and migrate at start when PODIUM_DB_MIGRATE is set).
func (c *comparison) startOrigins(ctx context.Context) (*backend, error) {
	be := &backend{readyPath: "/api/games/1", readyLen: -1}
	for i := 0; i < 2; i++ {
		a, err := freeAddr()
		if err != nil {
			be.stop()
			return nil, err
		}
		ch, err := c.start(fmt.Sprintf("origin%d", i+1), c.opts.LoadCPU, nil, c.opts.Podium, "origin", "-listen", a)
		if err != nil {
			be.stop()
			return nil, fmt.Errorf("origin: %w", err)
		}
		be.addrs = append(be.addrs, a)
		be.procs = append(be.procs, ch)
	}
	for i, a := range be.addrs {
		// The first start may apply migrations and the seed.
		if err := waitReady(ctx, be.procs[i], "http://"+a+"/api/games/1", -1, time.Minute); err != nil {
			be.stop()
			return nil, fmt.Errorf("origin %s: %w", a, err)
		}
	}
	return be, nil
}

// waitReady polls url until it answers 200 with a body of wantLen bytes
// (any length when wantLen < 0), the child exits, or timeout passes.
func waitReady(ctx context.Context, ch *child, url string, wantLen int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if ch != nil && ch.exited() {
			return fmt.Errorf("exited before it was ready (%v): %s", ch.err, ch.tail())
		}
		status, body, err := fasthttp.GetTimeout(nil, url, time.Second)
		switch {
		case err != nil:
			last = err.Error()
		case status != 200 || (wantLen >= 0 && len(body) != wantLen):
			last = fmt.Sprintf("status %d with %d bytes, want 200 with %d", status, len(body), wantLen)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s: %s", url, timeout, last)
}
