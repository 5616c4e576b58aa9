package origin

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the origin's Prometheus series, registered on a registry of
// the Server's own (no package globals, so tests can run servers side by
// side). Safe for concurrent use.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	purchases  *prometheus.CounterVec
	seatsSold  prometheus.Counter
	retries    *prometheus.CounterVec
	reads      *prometheus.CounterVec
	gtidWaits  *prometheus.CounterVec
	dbUp       *prometheus.GaugeVec
	replicaLag *prometheus.GaugeVec
	inFlight   prometheus.Gauge
	queries    *prometheus.HistogramVec
	// batchSize, batchSplits and soldOutAnswers watch the purchase
	// batches (sale.go).
	batchSize      prometheus.Histogram
	batchSplits    prometheus.Counter
	soldOutAnswers *prometheus.CounterVec
	keyLookupSize  prometheus.Histogram
}

// observeQuery records how long one database operation took (a listing
// read, one purchase transaction), retries and replica fallbacks included.
func (m *metrics) observeQuery(op string, start time.Time) {
	m.queries.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// methodLabel bounds the method label of the request counter: the methods
// of RFC 9110 section 9 (and PATCH, RFC 5789) keep their name, anything else
// a client invents is "other". A raw method would let one client mint a
// new series per request until Prometheus, or the origin's memory, gave out.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodPatch, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}

// latencyBuckets run from 0.5 ms to 10 s: the edge's own, so the two
// services' latencies read on the same scale.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_origin_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method (other for a method outside RFC 9110 and PATCH) and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podium_origin_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern.",
			Buckets: latencyBuckets,
		}, []string{"route"}),
		purchases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_origin_purchases_total",
			Help: "Purchase attempts by outcome: sold, sold_out, limit_per_buyer, not_found, replayed, key_mismatch, key_in_flight, key_limit, unavailable.",
		}, []string{"result"}),
		seatsSold: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podium_origin_seats_sold_total",
			Help: "Seats sold by committed purchases.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_origin_purchase_retries_total",
			Help: "Purchase batch transactions tried again, by reason: deadlock, lock_wait_timeout, connection, idempotency_key_race.",
		}, []string{"reason"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_origin_db_reads_total",
			Help: "Reads answered, by the kind of database that answered: replica or primary.",
		}, []string{"target"}),
		gtidWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podium_origin_gtid_waits_total",
			Help: "Read-your-writes waits on a replica, by result: reached, or timeout (the read then went to the primary).",
		}, []string{"result"}),
		dbUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podium_origin_db_up",
			Help: "1 when the last health check found the database usable, by role and address.",
		}, []string{"role", "addr"}),
		replicaLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podium_origin_replica_lag_seconds",
			Help: "Seconds_Behind_Master at the last check; -1 when unknown.",
		}, []string{"addr"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podium_origin_http_requests_in_flight",
			Help: "HTTP requests being answered now.",
		}),
		queries: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podium_origin_db_query_duration_seconds",
			Help:    "Time of one database operation, by operation: list_games, get_game, list_sports, purchase (one request, from arrival to answer), purchase_batch (one batch transaction, retries included).",
			Buckets: latencyBuckets,
		}, []string{"op"}),
	}
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podium_origin_purchase_batch_size",
		Help:    "Purchases of one game committed in one transaction.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
	})
	m.batchSplits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podium_origin_purchase_batch_splits_total",
		Help: "Purchase batches the database refused for a value one request carries (a constraint, a value out of range), whose requests then ran one by one.",
	})
	m.soldOutAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podium_origin_sold_out_short_circuits_total",
		Help: "Purchases of a game known sold out answered without a transaction on the primary, by key: no_key, new_key (409, looked up on a replica), stored_key (answered from the key's stored row: its replay, or 422 for another body).",
	}, []string{"key"})
	m.keyLookupSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podium_origin_sold_out_key_lookup_size",
		Help:    "Idempotency-Keys of purchases of sold-out games read in one query.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
	})
	m.reg.MustRegister(m.keyLookupSize, m.requests, m.duration, m.purchases, m.seatsSold, m.retries, m.reads,
		m.gtidWaits, m.dbUp, m.replicaLag, m.inFlight, m.queries, m.batchSize, m.batchSplits, m.soldOutAnswers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
