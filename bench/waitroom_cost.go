package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// CostRound is one paced round of one kind of request.
type CostRound struct {
	Round int `json:"round"`
	// Sent requests were due in the round; Requests were answered.
	Sent     int64 `json:"sent"`
	Requests int64 `json:"requests"`
	// Unexpected were not answered as the round expects: a client
	// error, or another status.
	Unexpected int64   `json:"unexpected"`
	DurationS  float64 `json:"duration_s"`
	Throughput float64 `json:"throughput_rps"`
	// EdgeCPUSeconds is the edge's CPU time over the round, all of it
	// (its ticker and health checks too), and MicrosPerRequest that over
	// the answered requests.
	EdgeCPUSeconds   float64 `json:"edge_cpu_s"`
	MicrosPerRequest float64 `json:"edge_cpu_us_per_request"`
	// UpstreamRequests are the listing's cache misses that reached the
	// upstream during the round (a waiting page reaches none).
	UpstreamRequests int64  `json:"upstream_requests"`
	LoadAverage      string `json:"load_average"`
}

// WaitroomCost is the cost figure: the edge's CPU per waiting-page
// request against a cached listing hit, paced alike, interleaved.
type WaitroomCost struct {
	Rate     float64       `json:"rate_rps"`
	Duration time.Duration `json:"duration_ns"`
	Rounds   int           `json:"rounds"`
	// Queued is the room's queue_length while the waiting pages were
	// measured: the identities waiting in the paused room.
	Queued   float64 `json:"queued"`
	MaxRatio float64 `json:"max_ratio"`
	// Listing are GET /api/games, cache hits; Waiting are POST
	// /api/games/1/buy with the visitor's place token, answered 429 with
	// JSON and a fresh token.
	Listing       []CostRound `json:"listing"`
	Waiting       []CostRound `json:"waiting"`
	ListingMicros float64     `json:"listing_cpu_us_per_request"`
	WaitingMicros float64     `json:"waiting_cpu_us_per_request"`
	// Ratio is the median waiting figure over the median listing one;
	// RoundRatios each round's own.
	Ratio       float64   `json:"ratio"`
	RoundRatios []float64 `json:"round_ratios"`
}

// cost pauses the room, queues CostQueue identities in it (arriving over
// Arrival, as the load's visitors did, so the queue has the same shape),
// then measures rounds of cached listing hits and of waiting pages at
// CostRate for CostDuration each, interleaved (A B A B ...).
func (b *roomBench) cost(ctx context.Context) (*WaitroomCost, error) {
	o := b.opts
	if err := b.adminPost("/rooms/" + roomName + "/pause"); err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, o.CostQueue)
	tokens := make([][]byte, o.CostQueue)
	for i := range addrs {
		addrs[i] = visitorAddr([4]byte{198, 19, 0, 0}, i)
	}
	fmt.Fprintf(o.Log, "waitroom: cost: queueing %d identities in the paused room over %s\n", o.CostQueue, o.Arrival)
	enrol := b.paced(ctx, float64(o.CostQueue)/o.Arrival.Seconds(), o.CostQueue, func(i int) bool {
		a := b.post(addrs[i], nil)
		if a.err != nil || a.status != fasthttp.StatusTooManyRequests || len(a.token) == 0 {
			return false
		}
		tokens[i] = a.token
		return true
	})
	if enrol.Unexpected > 0 {
		return nil, fmt.Errorf("queueing the cost phase's identities: %d of %d not answered 429 with a place token", enrol.Unexpected, enrol.Sent)
	}
	s, err := b.scrapeMetrics()
	if err != nil {
		return nil, err
	}
	c := &WaitroomCost{Rate: o.CostRate, Duration: o.CostDuration, Rounds: o.CostRounds, Queued: s.Queue, MaxRatio: o.MaxRatio}
	n := int(o.CostRate * o.CostDuration.Seconds())
	listing := func(i int) bool {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + b.listen + "/api/games")
		req.Header.Set("X-Forwarded-For", addrs[i%len(addrs)].String())
		return b.client.Do(req, resp) == nil && resp.StatusCode() == fasthttp.StatusOK
	}
	waiting := func(i int) bool {
		j := i % len(addrs)
		a := b.post(addrs[j], tokens[j])
		return a.err == nil && a.status == fasthttp.StatusTooManyRequests && len(a.token) > 0
	}
	listing(0) // fills the cache
	for round := 1; round <= o.CostRounds; round++ {
		for _, kind := range []string{"listing", "waiting"} {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			send, into := listing, &c.Listing
			if kind == "waiting" {
				send, into = waiting, &c.Waiting
			}
			up0, _ := b.c.upstreamRequests(b.up)
			r := b.paced(ctx, o.CostRate, n, send)
			up1, _ := b.c.upstreamRequests(b.up)
			r.Round, r.UpstreamRequests = round, up1-up0
			*into = append(*into, r)
			fmt.Fprintf(o.Log, "waitroom: cost round %d/%d %s: %d requests, %.0f req/s, edge %.1f µs/request, %d unexpected; load %s\n",
				round, o.CostRounds, kind, r.Requests, r.Throughput, r.MicrosPerRequest, r.Unexpected, r.LoadAverage)
		}
	}
	var ls, ws []float64
	for i := range c.Listing {
		ls = append(ls, c.Listing[i].MicrosPerRequest)
		ws = append(ws, c.Waiting[i].MicrosPerRequest)
		c.RoundRatios = append(c.RoundRatios, div(c.Waiting[i].MicrosPerRequest, c.Listing[i].MicrosPerRequest))
	}
	c.ListingMicros, c.WaitingMicros = median(ls), median(ws)
	c.Ratio = div(c.WaitingMicros, c.ListingMicros)
	return c, nil
}

// paced sends n requests at rate a second on a fixed schedule (open
// loop: a late answer delays no later send) from up to Connections
// workers, and measures the edge's CPU over them. send reports whether
// the answer was the one expected; its own errors count as unexpected.
func (b *roomBench) paced(ctx context.Context, rate float64, n int, send func(i int) bool) CostRound {
	jobs := make(chan int, n)
	var answered, bad atomic.Int64
	var wg sync.WaitGroup
	for range min(b.opts.Connections, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if send(i) {
					answered.Add(1)
				} else {
					bad.Add(1)
				}
			}
		}()
	}
	pids := b.edgePIDs()
	cpu0, err0 := cpuSeconds(pids)
	start := time.Now()
	sent := 0
	for ; sent < n && ctx.Err() == nil; sent++ {
		due := start.Add(time.Duration(float64(sent) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		jobs <- sent
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err1 := cpuSeconds(pids)
	r := CostRound{Sent: int64(sent), Requests: answered.Load(), Unexpected: bad.Load(), DurationS: elapsed.Seconds(), LoadAverage: loadAverage()}
	r.Throughput = float64(r.Requests) / elapsed.Seconds()
	if err0 == nil && err1 == nil {
		r.EdgeCPUSeconds = cpu1 - cpu0
		if r.Requests > 0 {
			r.MicrosPerRequest = r.EdgeCPUSeconds * 1e6 / float64(r.Requests)
		}
	}
	return r
}
