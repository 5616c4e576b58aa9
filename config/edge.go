package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults of the edge, one place each. README's schema table quotes them.
const (
	DefaultListen            = ":8080"
	DefaultAdmin             = "127.0.0.1:9901" // Envoy's admin port; 9090 is Prometheus's
	DefaultHealthPath        = "/ping"
	DefaultHealthInterval    = 2 * time.Second // HAProxy's inter
	DefaultHealthTimeout     = 500 * time.Millisecond
	DefaultHealthRise        = 2 // HAProxy's rise
	DefaultHealthFall        = 3 // HAProxy's fall
	DefaultConnectTimeout    = time.Second
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadBodyTimeout   = 30 * time.Second
	DefaultUpstreamTimeout   = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	// DefaultWriteTimeout is how long a response to a client may make no
	// progress: nginx's send_timeout (60s there), measured between two
	// sends, never over the whole response.
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10 // fasthttp's read buffer, and so the header limit
	DefaultMaxBodyBytes      = 64 << 10 // a purchase body is under 200 bytes
	DefaultMaxConnsPerHost   = 1024
	DefaultUpstreamIdleConn  = 30 * time.Second // below the origin's idle timeout, so the edge closes first
	DefaultAccessLogSample   = 1.0
	DefaultErrorLogRate      = 1   // error lines per second per client
	DefaultErrorLogBurst     = 10  // error lines a quiet client may log at once
	DefaultErrorLogTotal     = 100 // error lines per second for every client together
	DefaultBalancerAlgorithm = "least_conn"
	DefaultRouteName         = "default"
	DefaultCacheBytes        = 64 << 20
	DefaultLastGoodEntries   = 10000
	DefaultLastGoodBytes     = 64 << 20
	DefaultListingTTL        = 2 * time.Second  // seats left on the listing are at most this old on another edge
	DefaultStaleIfError      = 60 * time.Second // a fan sees a listing through a minute of origin outage
	DefaultStaticTTL         = time.Hour        // fingerprinted names: the origin's immutable max-age usually wins
	DefaultRate              = 50               // requests per second per client on most routes
	DefaultBurst             = 100
	DefaultBuyRate           = 2 // purchases per second per client: a fan buys, a script floods
	DefaultBuyBurst          = 5
	DefaultMaxRetries        = 2
	// MaxRetriesLimit is the most retries.max_retries may say: the edge
	// keeps the upstreams a request tried in a fixed array of this many
	// plus one, so a request's attempts allocate nothing.
	MaxRetriesLimit          = 5
	DefaultRetryBudget       = 20 // percent of active requests: Envoy's default budget
	DefaultRetryMinimum      = 3  // concurrent retries always allowed: Envoy's default
	DefaultConsecutiveFails  = 5
	DefaultBaseEjection      = 30 * time.Second
	DefaultMaxEjection       = 300 * time.Second
	DefaultMaxEjectedPercent = 50
)

// DefaultRetryOnStatus are the upstream answers retried elsewhere: the
// gateway errors, which say an upstream could not do the work.
var DefaultRetryOnStatus = []int{502, 503, 504}

// DefaultStaticUpstreams is what `podium edge` proxies to with no config
// and no -upstream flag: the three origins `make demo` starts.
var DefaultStaticUpstreams = []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}

// DefaultTrustedProxies is empty: no peer may set X-Forwarded-For or
// X-Request-ID for us unless the operator says so.
var DefaultTrustedProxies []string

// Edge is the whole edge configuration. The zero value is not useful: start
// from DefaultEdge, or Load a file, which starts from it.
//
// An Edge is treated as immutable once loaded; it may be shared by
// goroutines that only read it.
type Edge struct {
	Listen    string `yaml:"listen"`
	ReusePort bool   `yaml:"reuse_port"`
	Admin     string `yaml:"admin"`
	// AdminToken, when set, is the bearer token every admin request but
	// /ping must carry (Authorization: Bearer TOKEN). Without it the admin
	// listener must be on loopback: it serves the config, the upstreams,
	// pprof and cache purges. Elided from /config.
	AdminToken     string               `yaml:"admin_token"`
	Discovery      Discovery            `yaml:"discovery"`
	Balancer       Balancer             `yaml:"balancer"`
	HealthCheck    HealthCheck          `yaml:"healthcheck"`
	Routes         []Route              `yaml:"routes"`
	TrustedProxies []string             `yaml:"trusted_proxies"`
	Timeouts       Timeouts             `yaml:"timeouts"`
	Limits         Limits               `yaml:"limits"`
	UpstreamPool   UpstreamPool         `yaml:"upstream_pool"`
	AccessLog      AccessLog            `yaml:"access_log"`
	Cache          CacheStore           `yaml:"cache"`
	Retries        Retries              `yaml:"retries"`
	RateLimits     map[string]RateLimit `yaml:"ratelimits"`
	RateLimitAllow []string             `yaml:"ratelimit_allow"`
	Outlier        Outlier              `yaml:"outlier"`
	// WaitingRooms queue visitors in front of the paths they guard
	// (issue 18); none by default.
	WaitingRooms []WaitingRoom `yaml:"waiting_rooms"`
	// WaitingRoomStore says where the rooms' admission state lives: the
	// state dir (one edge), or Consul (many edges, waitroom_store.go).
	WaitingRoomStore WaitingRoomStore `yaml:"waiting_room_store"`
	// WaitingRoomStateDir holds each room's admission history and admin
	// controls (files per room and epoch), so a restarted edge keeps the
	// queue's order, refuses spent places and keeps a closed room closed.
	// Required when waiting_rooms are set: a shared default (under /tmp)
	// let another local user plant a history or a symlink, and two edges
	// on one host share files. The edge creates it 0700 and refuses one
	// owned by another user or writable by group or others.
	WaitingRoomStateDir string         `yaml:"waiting_room_state_dir"`
	trusted             []netip.Prefix // parsed TrustedProxies
	allow               []netip.Prefix // parsed RateLimitAllow
	// routesEmbedded: Routes are DefaultRoutes, not written by the user, so
	// a policy they name that ratelimits lacks falls back (see validate).
	routesEmbedded bool
	notices        []string // what validation changed or assumed; see Notices
}

// RateLimit is a named per-client token bucket policy. A policy named
// "default" applies to every route that names none.
type RateLimit struct {
	// Rate is tokens per second; Burst the bucket size.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// Key is what a client is: "ip" (the client address, IPv6 by its
	// IPv6Prefix) or "header:NAME" (e.g. an API key; falls back to the
	// address when the header is absent).
	Key string `yaml:"key"`
	// IPv6Prefix groups IPv6 clients, so one host cannot rotate addresses
	// within its /64. Zero means 64.
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// MaxClients bounds the buckets kept (least recently seen forgotten
	// first); zero means 131072, about 22 MiB.
	MaxClients int `yaml:"max_clients"`
	// IdleTTL forgets a client idle this long; zero means 1m.
	IdleTTL Duration `yaml:"idle_ttl"`
}

// CacheStore sizes the edge's response cache, shared by every route whose
// cache is on.
type CacheStore struct {
	// MaxBytes is ristretto's budget: stored bodies and headers.
	MaxBytes int64 `yaml:"max_bytes"`
	// LastGoodEntries and LastGoodBytes bound the last-good copies kept
	// outside ristretto for stale-if-error.
	LastGoodEntries int   `yaml:"last_good_entries"`
	LastGoodBytes   int64 `yaml:"last_good_bytes"`
}

// Retries says when a failed request is sent again, always to a different
// upstream, and never after the client has seen a byte of the answer.
type Retries struct {
	// MaxRetries per request; 0 turns retries off.
	MaxRetries int `yaml:"max_retries"`
	// PerTryTimeout bounds each attempt; 0 means timeouts.upstream. The
	// whole request is still bounded by timeouts.upstream.
	PerTryTimeout Duration `yaml:"per_try_timeout"`
	// BudgetPercent caps retries in flight at this share of requests in
	// flight, with MinConcurrent always allowed (Envoy's retry budget), so
	// retries cannot multiply an outage. A refused connection is retried
	// outside it: it reached no upstream.
	BudgetPercent int `yaml:"budget_percent"`
	MinConcurrent int `yaml:"min_concurrent"`
	// Methods retried on any failure besides GET, HEAD and OPTIONS, which
	// always are (e.g. PUT, DELETE when the origin makes them idempotent).
	// POST is retried only when it never reached an upstream (connect
	// refused) or carries an Idempotency-Key.
	Methods []string `yaml:"methods"`
	// OnStatus are upstream answers treated as failures worth a retry.
	OnStatus []int `yaml:"on_status"`
}

// Outlier is passive health checking: upstreams that keep failing are
// ejected for a while (Envoy's outlier detection).
type Outlier struct {
	// ConsecutiveFailures (connect errors, resets, timeouts, 5xx) eject an
	// upstream; 0 turns ejection off.
	ConsecutiveFailures int      `yaml:"consecutive_failures"`
	BaseEjection        Duration `yaml:"base_ejection"`       // the n-th ejection lasts n × this
	MaxEjection         Duration `yaml:"max_ejection"`        // cap on one ejection
	MaxEjectedPercent   int      `yaml:"max_ejected_percent"` // never more at once, and never all
	// UnejectOnActivePass returns an ejected upstream as soon as an active
	// health check passes (Envoy's successful_active_health_check_uneject_host).
	UnejectOnActivePass bool `yaml:"uneject_on_active_pass"`
}

// RouteCache turns caching on for a route's GET and HEAD requests.
type RouteCache struct {
	// TTL is the lifetime when the origin states none.
	TTL Duration `yaml:"ttl"`
	// MaxTTL, when set, caps every lifetime, the origin's too.
	MaxTTL Duration `yaml:"max_ttl"`
	// StaleIfError is how long past expiry the last good copy is served
	// when no origin answers.
	StaleIfError Duration `yaml:"stale_if_error"`
	// StaleWhileRevalidate is how long past expiry a stale copy is served
	// while one request revalidates it.
	StaleWhileRevalidate Duration `yaml:"stale_while_revalidate"`
	// MaxEntryBytes bounds one stored body; larger ones pass uncached.
	MaxEntryBytes int `yaml:"max_entry_bytes"`
}

// Discovery says where upstreams come from: a static list or Consul. A
// file that sets consul drops the embedded default's static list.
type Discovery struct {
	// Static is a fixed list of upstreams, each "host:port" or
	// {addr: "host:port", weight: 2}.
	Static []StaticUpstream `yaml:"static"`
	// Consul watches the catalog for passing instances of a service.
	Consul *Consul `yaml:"consul"`
}

// Consul is the Consul catalog as an upstream source, and the edge's own
// registration there.
type Consul struct {
	Address    string `yaml:"address"`     // agent HTTP API; default 127.0.0.1:8500
	Token      string `yaml:"token"`       // ACL token; secret: /config shows it elided
	Datacenter string `yaml:"datacenter"`  // default: the agent's
	Service    string `yaml:"service"`     // default podium-origin
	Tag        string `yaml:"tag"`         // only instances with this tag
	AllowStale bool   `yaml:"allow_stale"` // let any server answer
	// Register, when set, registers this edge as a service with an HTTP
	// check on its own /ping, marked critical first thing on SIGTERM.
	Register *ConsulRegister `yaml:"register"`
}

// ConsulRegister is the edge's own registration.
type ConsulRegister struct {
	Name                    string   `yaml:"name"`    // default podium-edge
	Address                 string   `yaml:"address"` // what others dial; default the listen host, or 127.0.0.1
	Tags                    []string `yaml:"tags"`
	CheckInterval           Duration `yaml:"check_interval"`            // default 2s
	CheckTimeout            Duration `yaml:"check_timeout"`             // default 1s
	DeregisterCriticalAfter Duration `yaml:"deregister_critical_after"` // default 1m (Consul's floor)
}

// StaticUpstream is one entry of discovery.static.
type StaticUpstream struct {
	Addr   string `yaml:"addr"`
	Weight int    `yaml:"weight"`
}

// UnmarshalYAML accepts both the short form "host:port" and the mapping.
func (s *StaticUpstream) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = StaticUpstream{Addr: n.Value, Weight: 1}
		return nil
	}
	type plain StaticUpstream
	p := plain{Weight: 1}
	if err := n.Decode(&p); err != nil {
		return err
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; k != "addr" && k != "weight" {
			return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: unknown key %s in discovery.static entry (allowed: addr, weight)", n.Content[i].Line, k)}}
		}
	}
	*s = StaticUpstream(p)
	return nil
}

// Balancer chooses among healthy upstreams.
type Balancer struct {
	// Algorithm is least_conn, the only one: in-flight requests ÷ weight,
	// ties broken at random.
	Algorithm string `yaml:"algorithm"`
	// SlowStart ramps a newly healthy upstream's weight from 10% to 100%
	// over this period. Zero turns it off.
	SlowStart Duration `yaml:"slow_start"`
}

// HealthCheck is the active /ping prober.
type HealthCheck struct {
	Path     string   `yaml:"path"`
	Interval Duration `yaml:"interval"`
	Timeout  Duration `yaml:"timeout"`
	Rise     int      `yaml:"rise"`
	Fall     int      `yaml:"fall"`
}

// Route matches requests and names them for metrics and logs.
type Route struct {
	// Name labels the route in metrics; it defaults to the match written
	// out ("/api/games/*/buy").
	Name  string      `yaml:"name"`
	Match Match       `yaml:"match"`
	Cache *RouteCache `yaml:"cache"`
	// RateLimit names the ratelimits policy for this route; empty means
	// "default" when that exists, and "none" turns limiting off.
	RateLimit string `yaml:"ratelimit"`
	// MaxInFlight caps the route's requests in flight; the excess is shed
	// with 503 and Retry-After before the origins drown. Zero: no cap.
	MaxInFlight int64 `yaml:"max_in_flight"`
	// Respond, when set, makes the edge answer every request on the route
	// itself and forward none (Envoy's direct_response): the default
	// routes answer the origins' internal endpoints (/metrics, /debug/)
	// 404 this way. A route that responds has no cache, purge or
	// max_in_flight.
	Respond *Respond `yaml:"respond"`
	// Purge lists paths dropped from the cache (every query and variant of
	// each) when a request on this route succeeds (2xx); a trailing "*"
	// drops everything under a prefix; "$1" stands for the path segment
	// the route's first "*" matched. A purchase purges the listing and its
	// game: ["/api/games", "/games", "/api/games/$1", "/games/$1"].
	Purge []string `yaml:"purge"`
}

// Respond is the edge's own answer on a route: its error page, JSON for
// /api/ paths and clients that accept JSON, HTML otherwise, as for any
// error of the edge.
type Respond struct {
	// Status is the answer's status, 400..599.
	Status int `yaml:"status"`
	// Message is the error's text; empty means the status's own, in
	// lower case ("not found").
	Message string `yaml:"message"`
}

// Match selects requests. Path is exact, where "*" stands for one whole
// path segment ("/api/games/*/buy"); PathPrefix matches on segment
// boundaries ("/api" matches /api and /api/x, not /apix). Methods empty
// means any method.
type Match struct {
	Path       string   `yaml:"path"`
	PathPrefix string   `yaml:"path_prefix"`
	Methods    []string `yaml:"methods"`
}

// Timeouts bound every wait.
type Timeouts struct {
	Connect    Duration `yaml:"connect"`     // dialling an upstream; failure → 502
	ReadHeader Duration `yaml:"read_header"` // a client sending its request headers
	ReadBody   Duration `yaml:"read_body"`   // a client sending its body, after the headers
	Upstream   Duration `yaml:"upstream"`    // an upstream's whole response; → 504
	Idle       Duration `yaml:"idle"`        // a client keep-alive connection between requests
	// Write bounds how long a response to a client may make no progress:
	// a send that waits this long for the client to take a byte closes
	// the connection. It is measured from the last byte the client took,
	// not over the whole response, so a slow but steady download of any
	// size finishes, and a client that pipelines requests and never reads
	// their answers holds its connection for this long, not for ever.
	Write Duration `yaml:"write"`
}

// Limits bound what a client may send.
type Limits struct {
	MaxHeaderBytes int `yaml:"max_header_bytes"` // → 431
	MaxBodyBytes   int `yaml:"max_body_bytes"`   // → 413
}

// UpstreamPool tunes the keep-alive pool to each upstream.
type UpstreamPool struct {
	MaxConns    int      `yaml:"max_conns"`     // per upstream; excess waits, then 503
	MaxIdleTime Duration `yaml:"max_idle_time"` // close pooled connections idle this long
}

// AccessLog controls the per-request JSON log line. Sample is the share of
// requests logged; 400 and 5xx answers are not sampled. Every line for a
// 4xx or 5xx answer, and the edge's other error lines about a client or an
// upstream, must also pass ErrorLimit.
type AccessLog struct {
	Enabled    bool     `yaml:"enabled"`
	Sample     float64  `yaml:"sample"`
	ErrorLimit LogLimit `yaml:"error_limit"`
}

// LogLimit bounds error lines, which a client controls: a token bucket per
// client (IPv6 by its /64; an upstream's own lines per upstream) and one
// for all of them. What it drops is counted in
// podium_edge_log_dropped_total, and the next line logged for the same
// client carries "suppressed": how many of its lines were dropped since
// its last.
type LogLimit struct {
	PerClient float64 `yaml:"per_client"` // lines per second per client
	Burst     int     `yaml:"burst"`      // lines a quiet client may log at once
	Total     float64 `yaml:"total"`      // lines per second for every client together; also that bucket's size
}

// DefaultEdge returns the embedded default configuration.
func DefaultEdge() *Edge {
	static := make([]StaticUpstream, len(DefaultStaticUpstreams))
	for i, a := range DefaultStaticUpstreams {
		static[i] = StaticUpstream{Addr: a, Weight: 1}
	}
	return &Edge{
		Listen:    DefaultListen,
		ReusePort: true,
		Admin:     DefaultAdmin,
		Discovery: Discovery{Static: static},
		Balancer:  Balancer{Algorithm: DefaultBalancerAlgorithm},
		HealthCheck: HealthCheck{
			Path:     DefaultHealthPath,
			Interval: Duration(DefaultHealthInterval),
			Timeout:  Duration(DefaultHealthTimeout),
			Rise:     DefaultHealthRise,
			Fall:     DefaultHealthFall,
		},
		Routes:         DefaultRoutes(),
		routesEmbedded: true,
		TrustedProxies: DefaultTrustedProxies,
		Timeouts: Timeouts{
			Connect:    Duration(DefaultConnectTimeout),
			ReadHeader: Duration(DefaultReadHeaderTimeout),
			ReadBody:   Duration(DefaultReadBodyTimeout),
			Upstream:   Duration(DefaultUpstreamTimeout),
			Idle:       Duration(DefaultIdleTimeout),
			Write:      Duration(DefaultWriteTimeout),
		},
		Limits:       Limits{MaxHeaderBytes: DefaultMaxHeaderBytes, MaxBodyBytes: DefaultMaxBodyBytes},
		UpstreamPool: UpstreamPool{MaxConns: DefaultMaxConnsPerHost, MaxIdleTime: Duration(DefaultUpstreamIdleConn)},
		AccessLog: AccessLog{Enabled: true, Sample: DefaultAccessLogSample,
			ErrorLimit: LogLimit{PerClient: DefaultErrorLogRate, Burst: DefaultErrorLogBurst, Total: DefaultErrorLogTotal}},
		Cache: CacheStore{MaxBytes: DefaultCacheBytes, LastGoodEntries: DefaultLastGoodEntries, LastGoodBytes: DefaultLastGoodBytes},
		RateLimits: map[string]RateLimit{
			"default": {Rate: DefaultRate, Burst: DefaultBurst, Key: "ip"},
			"buy":     {Rate: DefaultBuyRate, Burst: DefaultBuyBurst, Key: "ip"},
		},
		Retries: Retries{MaxRetries: DefaultMaxRetries, BudgetPercent: DefaultRetryBudget, MinConcurrent: DefaultRetryMinimum,
			OnStatus: append([]int(nil), DefaultRetryOnStatus...)},
		Outlier: Outlier{ConsecutiveFailures: DefaultConsecutiveFails, BaseEjection: Duration(DefaultBaseEjection),
			MaxEjection: Duration(DefaultMaxEjection), MaxEjectedPercent: DefaultMaxEjectedPercent, UnejectOnActivePass: true},
	}
}

// DefaultRoutes are the routes of the embedded default: the listing, the
// game pages and the static assets cached; a purchase purging what it
// changes; the origins' internal endpoints answered 404 by the edge;
// everything else proxied.
func DefaultRoutes() []Route {
	listing := func() *RouteCache {
		return &RouteCache{TTL: Duration(DefaultListingTTL), StaleIfError: Duration(DefaultStaleIfError)}
	}
	get := []string{"GET", "HEAD"}
	// A purchase, from the API or the page form, changes the listing and
	// that game's pages.
	purchase := func(name, path string) Route {
		return Route{Name: name, Match: Match{Path: path, Methods: []string{"POST"}}, RateLimit: "buy",
			Purge: []string{"/api/games", "/games", "/api/games/$1", "/games/$1"}}
	}
	return []Route{
		purchase("buy", "/api/games/*/buy"),
		purchase("buy_page", "/games/*/buy"),
		{Name: "api_games", Match: Match{Path: "/api/games", Methods: get}, Cache: listing()},
		{Name: "api_game", Match: Match{Path: "/api/games/*", Methods: get}, Cache: listing()},
		{Name: "games", Match: Match{Path: "/games", Methods: get}, Cache: listing()},
		{Name: "game", Match: Match{Path: "/games/*", Methods: get}, Cache: listing()},
		{Name: "static", Match: Match{PathPrefix: "/static", Methods: get},
			Cache: &RouteCache{TTL: Duration(DefaultStaticTTL), StaleIfError: Duration(DefaultStaleIfError)}},
		// The origin's /metrics shows its database addresses, seats sold
		// and pool statistics, and a Go service's /debug/ is its profiler:
		// for the operator on the origin's own port, never for the public.
		// Paths are case-sensitive (RFC 3986 §6.2.2.1), as the origin's
		// router is: /METRICS reaches its 404 page, not its metrics.
		{Name: "internal_metrics", Match: Match{PathPrefix: "/metrics"}, Respond: &Respond{Status: 404}},
		{Name: "internal_debug", Match: Match{PathPrefix: "/debug"}, Respond: &Respond{Status: 404}},
		{Name: DefaultRouteName, Match: Match{PathPrefix: "/"}},
	}
}

// LoadFile reads and validates an edge config file.
func LoadFile(path string) (*Edge, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Load(path, data)
}

// Load parses data (named file in errors) over the defaults and validates
// the result. A config that fails validation is rejected whole.
func Load(file string, data []byte) (*Edge, error) {
	cfg := DefaultEdge()
	root, err := decodeStrict(file, data, cfg, func(top *yaml.Node) {
		if d := mappingValue(top, "discovery"); d != nil && mappingValue(d, "consul") != nil {
			cfg.Discovery.Static = nil
		}
		if mappingValue(top, "routes") != nil {
			cfg.routesEmbedded = false
		}
		// A file that lists ratelimits lists all of them: the defaults'
		// "default" policy must not silently apply to a config without it.
		if mappingValue(top, "ratelimits") != nil {
			cfg.RateLimits = map[string]RateLimit{}
		}
	})
	if err != nil {
		return nil, err
	}
	v := &validator{root: root, dir: filepath.Dir(file)}
	cfg.validate(v)
	if len(v.problems) > 0 {
		return nil, &Error{File: file, Problems: v.problems}
	}
	return cfg, nil
}

// Notices are what validation assumed for the operator, to be logged at
// start and on reload and printed by -check: today, an embedded default
// route whose rate limit policy the file's ratelimits lacks.
func (c *Edge) Notices() []string { return c.notices }

// AllowPrefixes returns the parsed ratelimit_allow.
func (c *Edge) AllowPrefixes() []netip.Prefix { return c.allow }

// RoutePolicy returns the rate limit policy name that applies to a route,
// or "" for none.
func (c *Edge) RoutePolicy(r Route) string {
	switch r.RateLimit {
	case "none":
		return ""
	case "":
		if _, ok := c.RateLimits["default"]; ok {
			return "default"
		}
		return ""
	}
	return r.RateLimit
}

func policyNames(m map[string]RateLimit) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// WaitingRoomStatePath is the directory waiting rooms keep their state
// in: waiting_room_state_dir, made absolute relative to the config file.
func (c *Edge) WaitingRoomStatePath() string { return c.WaitingRoomStateDir }

// TrustedPrefixes returns the parsed trusted_proxies.
func (c *Edge) TrustedPrefixes() []netip.Prefix { return c.trusted }

// Redacted returns the config as YAML for /config, with the Consul token
// and the admin token elided.
func (c *Edge) Redacted() ([]byte, error) {
	out := *c
	if out.AdminToken != "" {
		out.AdminToken = "<elided>"
	}
	if cs := c.Discovery.Consul; cs != nil && cs.Token != "" {
		cp := *cs
		cp.Token = "<elided>"
		out.Discovery.Consul = &cp
	}
	return yaml.Marshal(&out)
}
