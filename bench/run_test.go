package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// serveInMemory runs handler on an in-memory listener and returns the
// dial function the generator should use.
func serveInMemory(t *testing.T, handler fasthttp.RequestHandler) fasthttp.DialFunc {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: handler}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		_ = ln.Close()
		<-done
	})
	return func(string) (net.Conn, error) { return ln.Dial() }
}

func getScenario(mode Mode, d time.Duration, conns int, rate float64) *Scenario {
	return &Scenario{
		Name: "test", Mode: mode, Duration: d, Timeout: 5 * time.Second,
		Streams: []Stream{{Name: "s", Connections: conns, Rate: Rate{Peak: rate},
			Mix: []MixEntry{{Op: OpGet, Weight: 1, Path: "/x"}}}},
	}
}

// The open-loop pacer must offer the scheduled rate: 2000 req/s for 5 s is
// 10000 requests, and the server must see them within ±5%.
func TestOpenLoopPacerHitsTargetRate(t *testing.T) {
	var served atomic.Int64
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		served.Add(1)
		c.SetBodyString("ok")
	})
	const rate, secs = 2000.0, 5
	sc := getScenario(ModeOpen, secs*time.Second, 16, rate)
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	want := rate * secs
	for _, c := range []struct {
		name string
		got  float64
	}{
		{"generator requests", float64(res.Requests)},
		{"server arrivals", float64(served.Load())},
		{"throughput×duration", res.Throughput * secs},
	} {
		if math.Abs(c.got-want)/want > 0.05 {
			t.Errorf("%s = %.0f, want %.0f ±5%%", c.name, c.got, want)
		}
	}
	if res.ErrorCount != 0 {
		t.Errorf("errors = %v, want none", res.Errors)
	}
	if res.TargetRequests != want {
		t.Errorf("target requests = %v, want %v", res.TargetRequests, want)
	}
}

// A 500 ms server stall must show up in p99 when latency is taken from the
// intended send time. The same run's uncorrected figure (from the actual
// send) must miss it: that is what proves this test can fail, i.e. that a
// generator measuring from the send would not pass.
func TestStallShowsInCorrectedP99(t *testing.T) {
	const stall = 500 * time.Millisecond
	var mu sync.Mutex
	var first time.Time
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		now := time.Now()
		mu.Lock()
		if first.IsZero() {
			first = now
		}
		from := first.Add(time.Second)
		mu.Unlock()
		if until := from.Add(stall); !now.Before(from) && now.Before(until) {
			time.Sleep(until.Sub(now))
		}
		c.SetBodyString("ok")
	})
	sc := getScenario(ModeOpen, 3*time.Second, 8, 1000)
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("corrected p99 %d µs max %d µs; uncorrected p99 %d µs max %d µs",
		res.Latency.P99, res.Latency.Max, res.Uncorrected.P99, res.Uncorrected.Max)
	// About 500 of 3000 requests were due during the stall, waiting
	// 0..500 ms: the top 1% waited over 400 ms.
	if res.Latency.P99 < 400_000 {
		t.Errorf("corrected p99 = %d µs, want >= 400000: the stall was not measured", res.Latency.P99)
	}
	if res.Latency.Max < 450_000 {
		t.Errorf("corrected max = %d µs, want >= 450000", res.Latency.Max)
	}
	// Only the 8 requests in flight saw the stall as service time.
	if res.Uncorrected.P99 >= 250_000 {
		t.Errorf("uncorrected p99 = %d µs, want < 250000: then this test could not tell a CO-prone generator apart", res.Uncorrected.P99)
	}
	if res.Requests < 2850 {
		t.Errorf("requests = %d, want about 3000: a stalled server must not reduce the sample count", res.Requests)
	}
}

// Per-connection recorders merged after the run must equal one histogram
// fed every sample: same counts in every bucket, same percentiles.
func TestHistogramMergeIsExact(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 2))
	one := newLatencyHistogram()
	parts := make([]*recorder, 7)
	tl := newTimeline(time.Second, 10*time.Second)
	for i := range parts {
		parts[i] = newRecorder([]MixEntry{{Op: OpGet, Weight: 1, Path: "/x"}}, tl)
	}
	for i := 0; i < 200_000; i++ {
		// Log-uniform from 1 µs to 60 s, so every bucket range is hit.
		v := int64(math.Exp(rng.Float64() * math.Log(float64(histMaxMicros))))
		d := time.Duration(v) * time.Microsecond
		_ = one.RecordValue(micros(d))
		parts[i%len(parts)].record(0, time.Duration(i%10)*time.Second, d, d, 200, nil, 0, false, false)
	}
	merged := newLatencyHistogram()
	for _, p := range parts {
		if dropped := merged.Merge(p.latency); dropped != 0 {
			t.Fatalf("merge dropped %d samples", dropped)
		}
	}
	if !merged.Equals(one) {
		t.Fatal("merged histogram differs from the single one")
	}
	if got, want := summarize(merged), summarize(one); got != want {
		t.Errorf("percentiles got %+v, want %+v", got, want)
	}
	// The timeline got every sample too, across its intervals.
	var n int64
	for _, p := range parts {
		p.flush()
	}
	for _, h := range tl.slots {
		if h != nil {
			n += h.TotalCount()
		}
	}
	if n != 200_000 {
		t.Errorf("timeline holds %d samples, want 200000", n)
	}
}

// Closed loop: every request the server answered is counted once, with its
// status, and the summary is consistent.
func TestClosedLoopCountsEveryRequest(t *testing.T) {
	var served atomic.Int64
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		if served.Add(1)%10 == 0 {
			c.SetStatusCode(503)
		}
		c.SetBodyString("ok")
	})
	sc := getScenario(ModeClosed, time.Second, 4, 0)
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != served.Load() || res.Requests == 0 {
		t.Fatalf("requests = %d, server answered %d", res.Requests, served.Load())
	}
	if got, want := res.Statuses["503"], served.Load()/10; got != want {
		t.Errorf("503s = %d, want %d", got, want)
	}
	if res.Statuses["200"]+res.Statuses["503"] != res.Requests {
		t.Errorf("statuses %v do not add up to %d", res.Statuses, res.Requests)
	}
	if res.Errors["http_5xx"] != res.Statuses["503"] || res.ErrorCount != res.Statuses["503"] {
		t.Errorf("errors %v (count %d), want http_5xx = %d", res.Errors, res.ErrorCount, res.Statuses["503"])
	}
	if res.ExpectedCount != 0 || len(res.Expected) != 0 {
		t.Errorf("expected answers %v (count %d) in a scenario that expects none", res.Expected, res.ExpectedCount)
	}
	l := res.Latency
	if !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max && l.P50 > 0) {
		t.Errorf("percentiles out of order: %+v", l)
	}
	if res.Generator.MicrosPerRequest <= 0 {
		t.Errorf("generator CPU per request = %v, want > 0", res.Generator.MicrosPerRequest)
	}
}

// The ticket-drop scenario sends what the ticket API expects: the mix,
// game ids in range, and purchases each with a unique Idempotency-Key and
// a JSON body.
func TestTicketDropRequests(t *testing.T) {
	var mu sync.Mutex
	counts := map[string]int{}
	keys := map[string]bool{}
	var problems []string
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		mu.Lock()
		defer mu.Unlock()
		path, method := string(c.Path()), string(c.Method())
		switch {
		case method == "GET" && path == "/api/games":
			counts["list"]++
			if string(c.QueryArgs().Peek("limit")) != "50" {
				problems = append(problems, "list without limit=50: "+string(c.RequestURI()))
			}
		case method == "GET" && strings.HasPrefix(path, "/api/games/"):
			counts["detail"]++
		case method == "POST" && strings.HasSuffix(path, "/buy"):
			counts["buy"]++
			key := string(c.Request.Header.Peek("Idempotency-Key"))
			if key == "" || keys[key] {
				problems = append(problems, "missing or repeated Idempotency-Key "+key)
			}
			keys[key] = true
			var body struct {
				Quantity int    `json:"quantity"`
				Email    string `json:"email"`
			}
			if err := json.Unmarshal(c.PostBody(), &body); err != nil || body.Quantity != 2 || !strings.Contains(body.Email, "@") {
				problems = append(problems, "bad buy body "+string(c.PostBody()))
			}
			c.SetStatusCode(201)
		default:
			problems = append(problems, "unexpected "+method+" "+path)
		}
		if len(c.Request.Header.Peek("X-Forwarded-For")) == 0 {
			problems = append(problems, "no X-Forwarded-For")
		}
	})
	sc, err := LoadScenario("ticket-drop")
	if err != nil {
		t.Fatal(err)
	}
	if err := applyOverrides(sc, "", 2*time.Second, 3000, 0, 0, 8, -1, ""); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("%d problems, first: %s", len(problems), problems[0])
	}
	total := float64(counts["list"] + counts["detail"] + counts["buy"])
	if int64(total) != res.Requests {
		t.Errorf("server saw %.0f requests, generator counted %d", total, res.Requests)
	}
	// 6000 requests: the 90/9/1 mix within a few standard deviations.
	for op, want := range map[string]float64{"list": 0.90, "detail": 0.09, "buy": 0.01} {
		got := float64(counts[op]) / total
		sd := math.Sqrt(want * (1 - want) / total)
		if math.Abs(got-want) > 5*sd {
			t.Errorf("%s share = %.4f, want %.2f", op, got, want)
		}
	}
	if res.Statuses["201"] != int64(counts["buy"]) {
		t.Errorf("201s = %d, buys = %d", res.Statuses["201"], counts["buy"])
	}
}

func TestScheduleRamp(t *testing.T) {
	for _, tc := range []struct {
		name string
		rate Rate
		at   time.Duration
		want float64 // requests due before at
	}{
		{"flat", Rate{Peak: 1000}, 5 * time.Second, 5000},
		{"ramp from zero, mid-ramp", Rate{Start: 0, Peak: 1000, Ramp: 10 * time.Second}, 5 * time.Second, 1250},
		{"ramp from zero, after ramp", Rate{Start: 0, Peak: 1000, Ramp: 10 * time.Second}, 15 * time.Second, 10000},
		{"ramp down", Rate{Start: 1000, Peak: 100, Ramp: 10 * time.Second}, 10 * time.Second, 5500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSchedule(tc.rate)
			if got := s.countBefore(tc.at); math.Abs(got-tc.want) > 1e-6 {
				t.Errorf("countBefore = %v, want %v", got, tc.want)
			}
			// offset is countBefore's inverse: request n is due when n
			// requests have been due.
			n := uint64(tc.want)
			if got := s.offset(n); (got - tc.at).Abs() > time.Millisecond {
				t.Errorf("offset(%d) = %v, want %v", n, got, tc.at)
			}
			// Offsets never go backwards.
			var prev time.Duration
			for i := uint64(0); i < n; i += 97 {
				o := s.offset(i)
				if o < prev {
					t.Fatalf("offset(%d) = %v < previous %v", i, o, prev)
				}
				prev = o
			}
		})
	}
}

func TestCheckTarget(t *testing.T) {
	for _, tc := range []struct {
		target      string
		allowRemote bool
		wantErr     string
	}{
		{"http://127.0.0.1:8080", false, ""},
		{"http://localhost:8080", false, ""},
		{"http://[::1]:8080", false, ""},
		{"http://192.0.2.10:8080", false, "-allow-remote"},
		{"http://192.0.2.10:8080", true, ""},
		{"ftp://127.0.0.1", false, "scheme"},
		{"", false, "no target"},
	} {
		_, err := checkTarget(tc.target, tc.allowRemote)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.target, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v, want one containing %q", tc.target, err, tc.wantErr)
		}
	}
}

func TestClientIPStaysInBenchmarkRange(t *testing.T) {
	_, bench, _ := net.ParseCIDR("198.18.0.0/15")
	seen := map[string]bool{}
	for _, n := range []int{0, 1, 254, 255, 256, 65535, 65536, 131070} {
		s := clientIP(n)
		ip := net.ParseIP(s)
		if ip == nil || !bench.Contains(ip) {
			t.Errorf("clientIP(%d) = %s, outside 198.18.0.0/15", n, s)
		}
		if seen[s] {
			t.Errorf("clientIP(%d) = %s repeats", n, s)
		}
		seen[s] = true
	}
}

func TestRetriedAnswersReportedApart(t *testing.T) {
	// Every 10th answer is slow and marked as a Podium edge marks an
	// answer it had to retry; the first-try latency must leave them out.
	var n atomic.Int64
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		if n.Add(1)%10 == 0 {
			time.Sleep(50 * time.Millisecond)
			c.Response.Header.Set(retriesHeader, "1")
		}
		c.SetBodyString("ok")
	})
	sc := getScenario(ModeOpen, 2*time.Second, 32, 500)
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	if want := res.Requests / 10; res.Retried < want-2 || res.Retried > want+2 {
		t.Errorf("retried = %d of %d, want about a tenth", res.Retried, res.Requests)
	}
	// Each slow answer took at least 50 ms at the server, so the overall
	// maximum is at least that; how fast the others were depends on the
	// machine, so which histogram holds what is checked on the recorder
	// itself (TestRecorderLeavesRetriedOutOfFirstTry), not with a
	// wall-clock bound here.
	if res.Latency.Max < 50_000 {
		t.Errorf("overall max = %d µs, want the slow tenth in it (>= 50 ms)", res.Latency.Max)
	}
	var md strings.Builder
	WriteMarkdown(&md, res)
	if !strings.Contains(md.String(), "answered at the first try") {
		t.Errorf("the report does not show the first-try latency:\n%s", md.String())
	}
}

// TestRecorderLeavesRetriedOutOfFirstTry: answers a Podium edge had to
// retry (X-Podium-Retries) count in the latency and not in the first-try
// latency; everything else counts in both.
func TestRecorderLeavesRetriedOutOfFirstTry(t *testing.T) {
	rec := newRecorder([]MixEntry{{Op: OpGet, Weight: 1, Path: "/x"}}, newTimeline(time.Second, time.Second))
	for i := range 100 {
		d, retried := time.Millisecond, false
		if i%10 == 0 {
			d, retried = 500*time.Millisecond, true
		}
		rec.record(0, 0, d, d, 200, nil, 0, retried, false)
	}
	if got := rec.latency.TotalCount(); got != 100 {
		t.Errorf("latency holds %d answers, want 100", got)
	}
	if got := rec.firstTry.TotalCount(); got != 90 || rec.retried != 10 {
		t.Errorf("first try holds %d answers and %d retried, want 90 and 10", got, rec.retried)
	}
	if max := rec.firstTry.Max(); max >= 500_000 {
		t.Errorf("first-try max = %d µs: a retried answer is in it", max)
	}
	if max := rec.latency.Max(); max < 500_000 {
		t.Errorf("latency max = %d µs: the retried answers are missing", max)
	}
}

// A status the scenario expects (buy-storm's sold-out 409) is reported
// apart from errors; the same op's other error statuses, and other ops'
// 409s, are still errors.
func TestExpectedStatusesAreNotErrors(t *testing.T) {
	var served atomic.Int64
	dial := serveInMemory(t, func(c *fasthttp.RequestCtx) {
		n := served.Add(1)
		switch {
		case string(c.Path()) == "/list":
			c.SetStatusCode(409) // not expected on this op
		case n%7 == 0:
			c.SetStatusCode(503)
		case n%2 == 0:
			c.SetStatusCode(409)
		}
	})
	sc := getScenario(ModeClosed, time.Second, 4, 0)
	sc.Streams[0].Mix = []MixEntry{
		{Op: OpGet, Weight: 9, Path: "/buy", Expect: []int{409}},
		{Op: OpGet, Weight: 1, Path: "/list"},
	}
	res, err := Run(context.Background(), sc, RunOptions{Target: "http://127.0.0.1:9", Dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	ops := res.Streams[0].Ops
	var listErrs int64
	if ops[1].Path == "/list" {
		listErrs = ops[1].Errors
	}
	if listErrs == 0 || listErrs != ops[1].Requests {
		t.Fatalf("the op that expects nothing: %d errors of %d requests, all 409s; want every one an error", listErrs, ops[1].Requests)
	}
	expected409 := res.Statuses["409"] - listErrs
	if expected409 == 0 {
		t.Fatalf("no 409 on the buy op; statuses %v", res.Statuses)
	}
	if got := res.Expected["409"]; got != expected409 || res.ExpectedCount != expected409 {
		t.Errorf("expected = %v (count %d), want 409: %d", res.Expected, res.ExpectedCount, expected409)
	}
	if got, want := res.Errors["http_4xx"], listErrs; got != want {
		t.Errorf("http_4xx errors = %d, want %d (only the list op's 409s)", got, want)
	}
	if got, want := res.ErrorCount, listErrs+res.Statuses["503"]; got != want || res.Statuses["503"] == 0 {
		t.Errorf("error count = %d, want %d (list 409s + every 503: %v)", got, want, res.Statuses)
	}
	if got, want := ops[0].Errors, res.Statuses["503"]; got != want {
		t.Errorf("buy op errors = %d, want its 503s only (%d)", got, want)
	}
	var md strings.Builder
	if err := WriteMarkdown(&md, res); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d answers were statuses the scenario expects (409: %d)", expected409, expected409); !strings.Contains(md.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, md.String())
	}
}

func TestExpectOnlyErrorStatuses(t *testing.T) {
	sc := getScenario(ModeClosed, time.Second, 1, 0)
	sc.Streams[0].Mix[0].Expect = []int{200}
	if err := sc.Validate(); err == nil || !strings.Contains(err.Error(), "expect 200: list error statuses (400-599)") {
		t.Errorf("expect: [200]: err %v", err)
	}
}
