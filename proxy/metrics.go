package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/podium-edge/podium/cache"
	"github.com/podium-edge/podium/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Error kinds: the kind label of podium_edge_errors_total. A fixed set, so the
// label's cardinality is bounded.
const (
	kindTimeout       = "timeout"              // upstream did not answer in time → 504
	kindRefused       = "refused"              // upstream connect refused or timed out → 502
	kindUpstream      = "upstream"             // reset, closed or bad response → 502
	kindNoUpstream    = "no_upstream"          // no healthy upstream → 503
	kindPoolFull      = "pool_full"            // every pooled connection busy → 503
	kindSmuggling     = "smuggling_rejected"   // ambiguous framing → 400
	kindMalformed     = "malformed"            // unparseable request → 400
	kindHeaderLimit   = "limit_rejected"       // headers or body over the limits → 431/413
	kindClientTimeout = "client_timeout"       // slow client → 408
	kindClientWrite   = "client_write_timeout" // a client that took no byte of its answer for timeouts.write → connection closed
	kindDirect        = "direct_response"      // a route that answers itself (routes[].respond), e.g. the origins' /metrics → 404
	kindNoRoute       = "no_route"             // no route matched → 404
	kindRateLimited   = "rate_limited"         // client over its rate → 429
	kindShed          = "shed"                 // route over max_in_flight → 503
	kindPanic         = "panic"                // a bug, recovered → 500

	retryStatus5xx = "status_5xx" // a retry reason: the upstream answered one of retries.on_status
)

var errorKinds = []string{kindTimeout, kindRefused, kindUpstream, kindNoUpstream, kindPoolFull, kindSmuggling, kindMalformed, kindHeaderLimit, kindClientTimeout, kindClientWrite, kindDirect, kindNoRoute, kindRateLimited, kindShed, kindPanic}

// Method indices: a request's method as the index of its label value in
// methods.
const (
	methodGET = iota
	methodHEAD
	methodPOST
	methodPUT
	methodDELETE
	methodOPTIONS
	methodPATCH
	methodOther // any other method, so a client cannot mint label values
	numMethods
)

// methods are the method label values, by method index.
var methods = [numMethods]string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER"}

func methodIndex(m []byte) int {
	switch string(m) { // compiles to comparisons, no allocation
	case "GET":
		return methodGET
	case "HEAD":
		return methodHEAD
	case "POST":
		return methodPOST
	case "PUT":
		return methodPUT
	case "DELETE":
		return methodDELETE
	case "OPTIONS":
		return methodOPTIONS
	case "PATCH":
		return methodPATCH
	}
	return methodOther
}

// routeCounts is podium_edge_requests_total for one route as a flat array
// of atomics: one Add per request, no map, no lock, no allocation. A
// CounterVec lookup costs a hash and an RLock per request; this costs
// neither, and the collector emits only the non-zero series at scrape time.
type routeCounts struct {
	counts   [numMethods * codeSlots]atomic.Uint64 // [method][code-100]
	duration prometheus.Observer                   // podium_edge_request_duration_seconds{route}
}

// done counts a finished request and observes its duration at the edge,
// from the first byte read to the answer being ready (the write to the
// client follows).
func (c *routeCounts) done(method, code int, start, now time.Time) {
	c.inc(method, code)
	if !start.IsZero() { // a request fasthttp could not parse has no start time
		c.duration.Observe(now.Sub(start).Seconds())
	}
}

const codeSlots = 500 // status codes 100..599

func (c *routeCounts) inc(method, code int) {
	if code < 100 || code > 599 {
		code = 599
	}
	c.counts[method*codeSlots+code-100].Add(1)
}

// requestCounter holds every route's counts by name. Routes that a reload
// removes keep their series until restart, as counters should.
type requestCounter struct {
	desc     *prometheus.Desc
	duration *prometheus.HistogramVec
	mu       sync.Mutex // guards byName; only reloads and scrapes take it
	byName   map[string]*routeCounts
}

func (c *requestCounter) get(name string) *routeCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.byName[name]
	if rc == nil {
		rc = &routeCounts{duration: c.duration.WithLabelValues(name)}
		c.byName[name] = rc
	}
	return rc
}

func (c *requestCounter) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *requestCounter) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, rc := range c.byName {
		for i := range rc.counts {
			v := rc.counts[i].Load()
			if v == 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), name, methods[i/codeSlots], strconv.Itoa(i%codeSlots+100))
		}
	}
}

// poolCollector reports per-upstream state read from the pool at scrape
// time, so the request path never touches a gauge.
type poolCollector struct {
	pool     *balancer.Pool
	inflight *prometheus.Desc
	up       *prometheus.Desc
	weight   *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inflight
	ch <- c.up
	ch <- c.weight
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, h := range c.pool.Hosts() {
		up := 0.0
		if h.Healthy() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(h.InFlight()), h.Addr)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, h.Addr)
		ch <- prometheus.MustNewConstMetric(c.weight, prometheus.GaugeValue, float64(h.Weight), h.Addr)
	}
}

// Metrics are the edge's Prometheus metrics, registered on their own
// registry (no package globals, so tests run in parallel).
//
// Metrics is safe for concurrent use; it must not be copied.
type Metrics struct {
	Registry *prometheus.Registry

	requests             *requestCounter
	reloads              *prometheus.CounterVec
	reloadOK             prometheus.Gauge
	reloadTime           prometheus.Gauge
	restartRequired      prometheus.Gauge
	upstreamDuration     *prometheus.HistogramVec
	errors               map[string]prometheus.Counter
	healthDuration       *prometheus.HistogramVec
	healthFailures       *prometheus.CounterVec
	healthChanges        *prometheus.CounterVec
	retries              map[string]prometheus.Counter
	limited              *prometheus.CounterVec
	shed                 prometheus.Counter
	retryBudgetExhausted prometheus.Counter
	ejections            prometheus.Counter
	staleConns           prometheus.Counter
	logDropped           *prometheus.CounterVec

	roomAdmittedTotal *prometheus.CounterVec
	roomWait          *prometheus.HistogramVec
	roomRefusedTotal  *prometheus.CounterVec

	cacheHit, cacheMiss, cacheStale prometheus.Counter
	cacheStaleOnError               prometheus.Counter
	cacheRevalidated                prometheus.Counter
	cacheCoalesced                  prometheus.Counter
	cachePurged                     prometheus.Counter
}

// latencyBuckets suit a ticket API behind a fast edge: 0.5 ms to 10 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics registers the edge's metrics: requests by route (route "none"
// counts requests that matched no route or failed before routing), the
// pool's upstreams, the cache, and config reloads.
func NewMetrics(pool *balancer.Pool, store *cache.Store, active *atomic.Int64, limits *ratelimit.Set) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: &requestCounter{
			desc: prometheus.NewDesc("podium_edge_requests_total",
				"Requests answered by the edge, by route, method and status code.",
				[]string{"route", "method", "code"}, nil),
			byName: map[string]*routeCounts{},
			// The latency SLOs are per route, measured where fans feel it:
			// cache hits and the edge's own queueing included.
			duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Name:    "podium_edge_request_duration_seconds",
				Help:    "Time from reading a request to its answer being ready, by route (cache hits included).",
				Buckets: latencyBuckets,
			}, []string{"route"}),
		},
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_edge_config_reloads_total",
			Help: "Config reloads (SIGHUP or file change), by result: success or failure.",
		}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podium_edge_config_last_reload_successful",
			Help: "1 when the last config reload succeeded, 0 when the file on disk was rejected and the old config serves.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podium_edge_config_last_reload_success_timestamp_seconds",
			Help: "When the config was last loaded successfully (start or reload).",
		}),
		restartRequired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podium_edge_config_restart_required",
			Help: "1 when the loaded config changed keys that only take effect on restart (listen, admin, limits, upstream_pool, ...).",
		}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podium_edge_upstream_request_duration_seconds",
			Help:    "Time from sending a request to an upstream until its response was read, by upstream.",
			Buckets: latencyBuckets,
		}, []string{"upstream"}),
		errors: map[string]prometheus.Counter{},
		healthDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podium_edge_healthcheck_duration_seconds",
			Help:    "Round-trip time of active health checks, by upstream.",
			Buckets: latencyBuckets,
		}, []string{"upstream"}),
		healthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_edge_healthcheck_failures_total",
			Help: "Active health checks that failed, by upstream.",
		}, []string{"upstream"}),
		healthChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_edge_upstream_state_changes_total",
			Help: "Up/down transitions of upstreams, by upstream and new state.",
		}, []string{"upstream", "state"}),
		retries: map[string]prometheus.Counter{},
		retryBudgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podium_edge_retry_budget_exhausted_total",
			Help: "Retries not made because the retry budget was spent.",
		}),
		ejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podium_edge_upstream_ejections_total",
			Help: "Upstreams ejected by outlier detection.",
		}),
		logDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_edge_log_dropped_total",
			Help: "Error log lines not written because of access_log.error_limit, by reason: client (that client's lines) or global (every client's).",
		}, []string{"reason"}),
		staleConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podium_edge_upstream_stale_connections_total",
			Help: "Pooled upstream connections the upstream had closed, found when a request was sent on one; the request went again on a fresh connection to the same upstream (not a retry).",
		}),
	}
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_retries_total",
		Help: "Requests sent again to another upstream, by why the attempt before failed.",
	}, []string{"reason"})
	for _, k := range []string{kindRefused, kindTimeout, kindUpstream, kindPoolFull, retryStatus5xx} {
		m.retries[k] = retries.WithLabelValues(k)
	}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "podium_edge_in_flight_requests",
		Help: "Client requests the edge is handling now.",
	}, func() float64 { return float64(active.Load()) })
	// By policy, never by client: a label per client address would grow
	// without bound.
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_ratelimit_rejected_total",
		Help: "Requests answered 429 because the client was over its rate, by policy.",
	}, []string{"policy"})
	m.shed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_edge_shed_total",
		Help: "Requests answered 503 because their route was at max_in_flight.",
	})
	reg.MustRegister(m.limited, m.shed, &limitsCollector{limits: limits,
		clients: prometheus.NewDesc("podium_edge_ratelimit_clients", "Clients with a bucket, by policy.", []string{"policy"}, nil),
		evicted: prometheus.NewDesc("podium_edge_ratelimit_evicted_total", "Buckets forgotten because the policy was at max_clients (raise it if this climbs).", []string{"policy"}, nil),
	})
	reg.MustRegister(retries, m.retryBudgetExhausted, m.ejections, m.staleConns, m.logDropped, m.reloads, m.reloadOK, m.reloadTime, m.restartRequired)
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.reloadOK.Set(1)
	m.reloadTime.SetToCurrentTime()
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_errors_total",
		Help: "Requests the edge answered with its own error, by kind (client_write_timeout: connections closed because the client took no byte of its answer for timeouts.write).",
	}, []string{"kind"})
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_cache_requests_total",
		Help: "Requests on caching routes, by what the cache did: hit, miss or stale.",
	}, []string{"result"})
	m.cacheHit = lookups.WithLabelValues("hit")
	m.cacheMiss = lookups.WithLabelValues("miss")
	m.cacheStale = lookups.WithLabelValues("stale")
	m.cacheStaleOnError = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_edge_cache_stale_on_error_total",
		Help: "Origin fetches that failed and were answered with a stale copy (stale-if-error).",
	})
	m.cacheRevalidated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_edge_cache_revalidated_total",
		Help: "Stale entries the origin confirmed with 304 Not Modified.",
	})
	m.cacheCoalesced = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_edge_cache_coalesced_total",
		Help: "Requests that waited for another request's origin fetch of the same key instead of making their own.",
	})
	m.cachePurged = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_edge_cache_purged_entries_total",
		Help: "Entries removed by purchases, unsafe methods and the admin purge.",
	})
	m.roomAdmittedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_waitroom_admitted_total",
		Help: "Visitors a waiting room admitted (place exchanged for an admission), by room.",
	}, []string{"room"})
	m.roomWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "podium_edge_waitroom_wait_seconds",
		Help: "Time from a visitor's place (arrival, or the opening for the pre-queue) to admission, by room.",
		// A second to two hours: an on-sale queue is minutes long.
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200},
	}, []string{"room"})
	m.roomRefusedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_edge_waitroom_tokens_refused_total",
		Help: "Waiting room tokens refused, by room and reason (bad_mac: forged or altered; copied: another visitor's; spent: admitted too long ago; expired, malformed, stale_epoch, unknown_kid, wrong_room; stale_opening: a place of an earlier opens_at). The visitor is placed anew.",
	}, []string{"room", "reason"})
	reg.MustRegister(m.roomAdmittedTotal, m.roomWait, m.roomRefusedTotal)
	reg.MustRegister(lookups, m.cacheStaleOnError, m.cacheRevalidated, m.cacheCoalesced, m.cachePurged)
	if store != nil {
		reg.MustRegister(&storeCollector{store: store,
			bytes:     prometheus.NewDesc("podium_edge_cache_bytes", "Bytes held by the cache (ristretto's cost).", nil, nil),
			evictions: prometheus.NewDesc("podium_edge_cache_evictions_total", "Entries ristretto evicted to stay in its budget.", nil, nil),
			rejected:  prometheus.NewDesc("podium_edge_cache_rejected_total", "Entries ristretto's admission policy refused.", nil, nil),
			lastGood:  prometheus.NewDesc("podium_edge_cache_last_good_entries", "Last-good copies kept for stale-if-error.", nil, nil),
		})
	}
	for _, k := range errorKinds {
		m.errors[k] = errs.WithLabelValues(k) // resolved once; zero series exist from the start
	}
	reg.MustRegister(m.requests, m.requests.duration, m.upstreamDuration, errs, m.healthDuration, m.healthFailures, m.healthChanges, inFlight,
		&poolCollector{
			pool:     pool,
			inflight: prometheus.NewDesc("podium_edge_upstream_in_flight_requests", "Requests in flight to each upstream.", []string{"upstream"}, nil),
			up:       prometheus.NewDesc("podium_edge_upstream_up", "1 when the active health check holds the upstream up.", []string{"upstream"}, nil),
			weight:   prometheus.NewDesc("podium_edge_upstream_weight", "Configured weight of each upstream.", []string{"upstream"}, nil),
		},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// routeCounts returns the request counters of the named route.
func (m *Metrics) routeCounts(name string) *routeCounts { return m.requests.get(name) }

// ObserveReload records a config reload.
func (m *Metrics) ObserveReload(ok, restartRequired bool) {
	if !ok {
		m.reloads.WithLabelValues("failure").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.reloadOK.Set(1)
	m.reloadTime.SetToCurrentTime()
	if restartRequired {
		m.restartRequired.Set(1)
	} else {
		m.restartRequired.Set(0)
	}
}

// ObserveProbe records one health check (healthcheck.Prober.OnProbe).
func (m *Metrics) ObserveProbe(h *balancer.Host, rtt time.Duration, err error) {
	m.healthDuration.WithLabelValues(h.Addr).Observe(rtt.Seconds())
	if err != nil {
		m.healthFailures.WithLabelValues(h.Addr).Inc()
	}
}

// ObserveChange records one up/down transition (healthcheck.Prober.OnChange).
func (m *Metrics) ObserveChange(h *balancer.Host, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	m.healthChanges.WithLabelValues(h.Addr, state).Inc()
}

// forgetUpstream drops the series of an upstream that left the pool, so
// churn in Consul does not grow the scrape forever.
func (m *Metrics) forgetUpstream(addr string) {
	m.upstreamDuration.DeleteLabelValues(addr)
	m.healthDuration.DeleteLabelValues(addr)
	m.healthFailures.DeleteLabelValues(addr)
	m.healthChanges.DeleteLabelValues(addr, "up")
	m.healthChanges.DeleteLabelValues(addr, "down")
}

// storeCollector reads the cache's counters at scrape time.
type storeCollector struct {
	store                                *cache.Store
	bytes, evictions, rejected, lastGood *prometheus.Desc
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.evictions
	ch <- c.rejected
	ch <- c.lastGood
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.store.Stats()
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(st.Evictions))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(st.Rejected))
	ch <- prometheus.MustNewConstMetric(c.lastGood, prometheus.GaugeValue, float64(st.LastGoodEntries))
}

func (m *Metrics) rateLimited(policy string) { m.limited.WithLabelValues(policy).Inc() }

// limitsCollector reads the rate limiters' sizes at scrape time.
type limitsCollector struct {
	limits           *ratelimit.Set
	clients, evicted *prometheus.Desc
}

func (c *limitsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.clients
	ch <- c.evicted
}

func (c *limitsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.limits.Limiters() {
		st := l.Stats()
		name := l.Policy().Name
		ch <- prometheus.MustNewConstMetric(c.clients, prometheus.GaugeValue, float64(st.Clients), name)
		ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(st.Evicted), name)
	}
}

// roomAdmitted counts an admission to room after waitSeconds.
func (m *Metrics) roomAdmitted(room string, waitSeconds float64) {
	m.roomAdmittedTotal.WithLabelValues(room).Inc()
	m.roomWait.WithLabelValues(room).Observe(waitSeconds)
}

// roomRefused counts a token room refused, by why.
func (m *Metrics) roomRefused(room, reason string) {
	m.roomRefusedTotal.WithLabelValues(room, reason).Inc()
}

var (
	roomQueueDesc = prometheus.NewDesc("podium_edge_waitroom_queue_length",
		"Visitors waiting in a waiting room on this edge (estimated from its per-millisecond counts), by room.", []string{"room"}, nil)
	roomWaitDesc = prometheus.NewDesc("podium_edge_waitroom_estimated_wait_seconds",
		"Estimated wait of the last visitor in a waiting room: its queue over the measured admission rate, by room.", []string{"room"}, nil)
	// roomCoordUpDesc is reported only for rooms coordinated through
	// Consul (waiting_room_store.consul).
	roomCoordUpDesc = prometheus.NewDesc("podium_edge_waitroom_coordination_up",
		"1 while this edge follows its waiting room's leader through Consul; 0 while it admits alone at its share of the rate (Consul unreachable or no leader heard), by room.", []string{"room"}, nil)
)

// roomCollector reports the rooms of the config in force.
type roomCollector struct {
	p           *Proxy
	queue, wait *prometheus.Desc
}

func (c *roomCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queue
	ch <- c.wait
	ch <- roomCoordUpDesc
}

// Collect implements prometheus.Collector. A closed (sold out) room
// reports no queue and no wait: its queue is frozen, nobody in it will be
// admitted, and reporting it kept PodiumWaitingRoomWaitLong firing for
// ever after a sell-out (review 18, 12).
func (c *roomCollector) Collect(ch chan<- prometheus.Metric) {
	for _, rs := range c.p.state.Load().rooms {
		var q, wait float64
		if rs.rt.status.Load() != roomClosed {
			q = rs.rt.gate.Queued()
			wait = q / rs.rt.measuredRate()
		}
		ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, q, rs.cfg.Name)
		ch <- prometheus.MustNewConstMetric(c.wait, prometheus.GaugeValue, wait, rs.cfg.Name)
		if co := rs.rt.coord; co != nil {
			up := 0.0
			if co.Up() {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(roomCoordUpDesc, prometheus.GaugeValue, up, rs.cfg.Name)
		}
	}
}
