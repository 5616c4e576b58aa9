package origin

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the origin: HTTP handlers over a primary/replica cluster. Create
// it with New, serve it with Run (or mount Handler), release it with Close.
// Safe for concurrent use; must not be copied.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	db      *cluster
	pages   *pages
	forms   *formTokens
	handler http.Handler
	// draining turns /ping to 503 once shutdown has begun.
	draining atomic.Bool
}

// New opens the database pools (lazily: nothing is dialled yet) and builds
// the handlers. cfg's zero fields take their defaults.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	m := newMetrics()
	db, err := newCluster(cfg, log, m)
	if err != nil {
		return nil, err
	}
	p, err := newPages()
	if err != nil {
		db.close()
		return nil, err
	}
	forms := &formTokens{load: db.formSecret}
	if cfg.FormSecret != "" {
		forms.key = []byte(cfg.FormSecret)
	}
	s := &Server{cfg: cfg, log: log, m: m, db: db, pages: p, forms: forms}
	s.handler = s.routes()
	return s, nil
}

// Handler returns the origin's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Close releases the database pools.
func (s *Server) Close() { s.db.close() }

// CheckDatabases runs one round of database health checks now, as the
// background loop in Run does every HealthInterval.
func (s *Server) CheckDatabases(ctx context.Context) { s.db.checkSafely(ctx) }

// Run serves on ln until ctx ends, then shuts down gracefully: /ping turns
// 503 for DrainDelay so that edges stop sending, then the listener closes
// and in-flight requests get up to ShutdownTimeout to finish. Run does not
// close the Server.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	hctx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHealth()
	s.db.checkSafely(hctx)
	go s.db.healthLoop(hctx)
	go s.db.sweepLoop(hctx)

	srv := &http.Server{
		Handler: s.handler,
		// Slowloris bounds; a purchase may take PurchaseTimeout, so the
		// write timeout sits above it.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      s.cfg.PurchaseTimeout + 10*time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("origin: serving", "addr", ln.Addr().String(), "primary", s.db.primaryName, "replicas", len(s.db.replicas))

	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	s.log.Info("origin: draining", "delay", s.cfg.DrainDelay)
	time.Sleep(s.cfg.DrainDelay)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: in-flight requests did not finish within %s: %w", s.cfg.ShutdownTimeout, err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	s.log.Info("origin: stopped")
	return nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	api := func(pattern string, h func(http.ResponseWriter, *http.Request)) { mux.HandleFunc(pattern, h) }

	api("GET /api/games", s.apiListGames)
	api("GET /api/games/{id}", s.apiGetGame)
	api("POST /api/games/{id}/buy", s.apiBuy)
	// Method-less twins catch the other methods, so that they get a JSON
	// 405 with Allow rather than the mux's plain-text one.
	api("/api/games", s.methodNotAllowed("GET, HEAD"))
	api("/api/games/{id}", s.methodNotAllowed("GET, HEAD"))
	api("/api/games/{id}/buy", s.methodNotAllowed("POST"))
	api("/api/", s.apiNotFound)

	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/games", http.StatusFound)
	})
	mux.HandleFunc("GET /games", s.pageGames)
	mux.HandleFunc("GET /games/{id}", s.pageGame)
	mux.HandleFunc("GET /games/{id}/buy", s.pageBuyForm)
	mux.HandleFunc("POST /games/{id}/buy", s.pageBuy)
	mux.HandleFunc("GET /static/{name}", s.pages.serveStatic)
	mux.HandleFunc("GET /ping", s.ping)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", s.pageNotFound)
	return s.middleware(s.sameOrigin(mux))
}

// sameOrigin refuses requests with an unsafe method (POST and the like)
// that a browser says come from another site, before anything reads them:
// the defence against cross-site request forgery that browsers now make
// possible, by the standard library's CrossOriginProtection. A browser
// marks every request with Sec-Fetch-Site, and older ones still send Origin
// on a cross-origin POST; only "same-origin" and "none" (typed in the
// address bar) pass, or an Origin whose host is the request's Host, which
// the edge forwards unchanged. Clients that are not browsers send neither
// header and pass; they cannot act with a fan's cookies anyway. The buy
// form's token (formToken) is the second, independent check.
func (s *Server) sameOrigin(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			s.log.Info("origin: cross-origin request refused", "request_id", requestID(r), "method", r.Method, "path", r.URL.Path,
				"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
			w.Header().Set("Cache-Control", "no-store")
			if isAPI(r) {
				apiError(w, r, http.StatusForbidden, "refused: this request came from another site (Origin "+
					strconvQuote(r.Header.Get("Origin"))+", Sec-Fetch-Site "+strconvQuote(r.Header.Get("Sec-Fetch-Site"))+
					"); a browser may buy only from this site's own pages")
				return
			}
			s.pages.renderError(w, r, http.StatusForbidden, "This purchase was sent from another site, so it was refused and nothing was bought. "+
				"To buy tickets, use the form on this site.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// strconvQuote quotes a header value for a message, cut to 100 bytes.
func strconvQuote(v string) string {
	if len(v) > 100 {
		v = v[:100]
	}
	return strconv.Quote(v)
}

// requestIDKey carries the request ID in the request context.
type requestIDKey struct{}

// requestID returns the ID of r: the edge's X-Request-ID, or one made here.
func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey{}).(string)
	return id
}

// validRequestID accepts what an edge or load balancer puts in X-Request-ID
// (UUIDs, hex, base64) and nothing that could split a log line or a header.
func validRequestID(id string) bool { return visibleASCII(id, 128) }

// visibleASCII reports whether s is 1..max printable ASCII characters other
// than space, quote and backslash: safe to echo in JSON, headers and logs.
func visibleASCII(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusWriter records the status for metrics and logs.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware gives every request an ID (the edge's, echoed), recovers
// panics into a 500 page, and records metrics and logs.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
		sw := &statusWriter{ResponseWriter: w}
		s.m.inFlight.Inc()
		defer func() {
			s.m.inFlight.Dec()
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("origin: panic serving request", "request_id", id, "method", r.Method, "path", r.URL.Path,
					"panic", p, "stack", string(debug.Stack()))
				if sw.status == 0 {
					s.serverError(sw, r, errors.New("internal error"))
				}
			}
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			s.m.requests.WithLabelValues(route, methodLabel(r.Method), fmt.Sprint(sw.status)).Inc()
			s.m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
			// A 503 /ping is the drain or an outage, both logged once on
			// their transition; the edge's probes would repeat it every 2s.
			if s.logRequest(sw.status, r.URL.Path, rand.Float64()) {
				lvl := slog.LevelInfo
				if sw.status >= 500 {
					lvl = slog.LevelWarn
				}
				s.log.Log(r.Context(), lvl, "origin: request", "request_id", id, "method", r.Method,
					"path", r.URL.Path, "status", sw.status, "duration", time.Since(start))
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

// logRequest decides whether one answer gets an access-log line: every 5xx
// (but a 503 /ping, which is the drain or an outage, both logged once on
// their transition; the edge's probes would repeat it every 2 s), and of
// the rest all with AccessLog, else the AccessLogSample share. roll is a
// uniform number in [0, 1).
func (s *Server) logRequest(status int, path string, roll float64) bool {
	switch {
	case status >= 500:
		return path != "/ping"
	case s.cfg.AccessLog:
		return true
	}
	return roll < s.cfg.AccessLogSample
}

// ping answers the edge's health check: 200 pong while some database can
// serve reads, 503 with the reason otherwise or once draining.
func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case s.draining.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "draining")
	case !s.db.canRead():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "no database reachable: primary %s down, %d replicas down\n", s.db.primaryName, len(s.db.replicas))
	default:
		fmt.Fprintln(w, "pong")
	}
}

// overTLS reports whether the browser reached the site over TLS: this
// listener's own, or the edge's, which says so in X-Forwarded-Proto (the
// first item, the one facing the client, when proxies chain). The origin
// trusts that header as it trusts the edge's X-Request-ID: the edge
// replaces it on requests from clients it does not trust, and a client
// that reaches the origin directly and lies only marks its own cookies
// Secure.
func overTLS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	proto, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ",")
	return strings.EqualFold(strings.TrimSpace(proto), "https")
}

// isAPI reports whether r wants JSON errors.
func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }
