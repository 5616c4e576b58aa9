package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Validation runs after the file is decoded over the defaults, section by
// section, as each section's type knows its own rules; Edge.validate adds
// what spans sections (a route naming a rate limit policy). Every problem
// is recorded with its dotted key, so the error names file, line and key,
// and every problem of a file is reported at once.

// Validate checks a config built or changed in code (flags over a file).
// Problems are reported against source, without line numbers.
func (c *Edge) Validate(source string) error {
	v := &validator{}
	c.validate(v)
	if len(v.problems) > 0 {
		return &Error{File: source, Problems: v.problems}
	}
	return nil
}

func (c *Edge) validate(v *validator) {
	checkAddr(v, "listen", c.Listen)
	checkAddr(v, "admin", c.Admin)
	if c.AdminToken == "" && !IsLoopbackAddr(c.Admin) {
		v.addf("admin", "%q is reachable beyond this host, and the admin listener serves the config, the upstreams, pprof and cache purges: bind it to 127.0.0.1:PORT, or set admin_token", c.Admin)
	}
	if t := c.AdminToken; t != "" && (len(t) < 16 || strings.ContainsAny(t, " \t\r\n")) {
		v.addf("admin_token", "must be at least 16 characters without spaces (e.g. openssl rand -hex 16), got %d characters", len(t))
	}
	c.Discovery.validate(v)
	c.Balancer.validate(v)
	c.HealthCheck.validate(v)
	c.validateRoutes(v)
	for name, rl := range c.RateLimits {
		rl.validate(v, name)
	}
	c.resolveRoutePolicies(v)
	c.allow = parsePrefixes(v, "ratelimit_allow", c.RateLimitAllow)
	c.trusted = parsePrefixes(v, "trusted_proxies", c.TrustedProxies)
	c.Timeouts.validate(v)
	c.Limits.validate(v)
	c.UpstreamPool.validate(v)
	c.Cache.validate(v)
	c.Retries.validate(v)
	c.Outlier.validate(v)
	c.AccessLog.validate(v)
	c.validateWaitingRooms(v)
	c.validateWaitingRoomStore(v)
}

func (d Discovery) validate(v *validator) {
	switch cs := d.Consul; {
	case cs != nil && len(d.Static) > 0:
		v.addf("discovery", "set static or consul, not both")
	case cs == nil && len(d.Static) == 0:
		v.addf("discovery.static", "must list at least one upstream (host:port), or set discovery.consul")
	case cs != nil:
		cs.validate(v, "discovery.consul")
	}
	seen := map[string]bool{}
	for i, u := range d.Static {
		key := fmt.Sprintf("discovery.static[%d]", i)
		if _, _, err := net.SplitHostPort(u.Addr); err != nil || !validPort(u.Addr) {
			v.addf(key, "must be host:port, got %q", u.Addr)
		}
		if u.Weight < 1 || u.Weight > 1000 {
			v.addf(key, "weight must be 1..1000, got %d", u.Weight)
		}
		if seen[u.Addr] {
			v.addf(key, "%s is listed twice", u.Addr)
		}
		seen[u.Addr] = true
	}
}

func (cs *Consul) validate(v *validator, key string) {
	if cs.Address != "" {
		a := cs.Address
		if _, rest, ok := strings.Cut(a, "://"); ok {
			a = rest
		}
		if _, _, err := net.SplitHostPort(a); err != nil || !validPort(a) {
			v.addf(key+".address", "must be host:port such as 127.0.0.1:8500, got %q", cs.Address)
		}
	}
	if r := cs.Register; r != nil {
		if r.Address != "" {
			if ip, err := netip.ParseAddr(r.Address); err != nil || ip.IsUnspecified() {
				v.addf(key+".register.address", "must be an IP address others can dial (not 0.0.0.0), got %q", r.Address)
			}
		}
		if r.CheckInterval < 0 || r.CheckTimeout < 0 || r.DeregisterCriticalAfter < 0 {
			v.addf(key+".register", "durations must be >= 0")
		}
	}
}

func (b Balancer) validate(v *validator) {
	if b.Algorithm != "least_conn" {
		v.addf("balancer.algorithm", "must be least_conn, got %q", b.Algorithm)
	}
	if b.SlowStart < 0 {
		v.addf("balancer.slow_start", "must be >= 0, got %s", b.SlowStart)
	}
}

func (hc HealthCheck) validate(v *validator) {
	if !strings.HasPrefix(hc.Path, "/") {
		v.addf("healthcheck.path", "must start with /, got %q", hc.Path)
	}
	if hc.Interval <= 0 {
		v.addf("healthcheck.interval", "must be > 0, got %s", hc.Interval)
	}
	if hc.Timeout <= 0 {
		v.addf("healthcheck.timeout", "must be > 0, got %s", hc.Timeout)
	} else if hc.Interval > 0 && hc.Timeout > hc.Interval {
		v.addf("healthcheck.timeout", "must not exceed healthcheck.interval (%s), got %s", hc.Interval, hc.Timeout)
	}
	if hc.Rise < 1 {
		v.addf("healthcheck.rise", "must be >= 1, got %d", hc.Rise)
	}
	if hc.Fall < 1 {
		v.addf("healthcheck.fall", "must be >= 1, got %d", hc.Fall)
	}
}

// validateRoutes checks each route and that their names, which label
// metrics, are unique. A route without a name is named for its match.
func (c *Edge) validateRoutes(v *validator) {
	if len(c.Routes) == 0 {
		v.addf("routes", "must list at least one route; add {match: {path_prefix: /}} to proxy everything")
	}
	names := map[string]bool{}
	for i := range c.Routes {
		r := &c.Routes[i]
		key := fmt.Sprintf("routes[%d]", i)
		r.validate(v, key)
		if r.Name == "" {
			r.Name = r.Match.Path + r.Match.PathPrefix
		}
		if names[r.Name] {
			v.addf(key+".name", "%q is used by an earlier route; names label metrics and must be unique", r.Name)
		}
		names[r.Name] = true
	}
}

func (r *Route) validate(v *validator, key string) {
	m := r.Match
	switch {
	case m.Path == "" && m.PathPrefix == "":
		v.addf(key+".match", "needs path or path_prefix")
	case m.Path != "" && m.PathPrefix != "":
		v.addf(key+".match", "has both path and path_prefix; use one")
	case m.Path != "" && !strings.HasPrefix(m.Path, "/"):
		v.addf(key+".match.path", "must start with /, got %q", m.Path)
	case m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/"):
		v.addf(key+".match.path_prefix", "must start with /, got %q", m.PathPrefix)
	case strings.Contains(m.PathPrefix, "*"):
		v.addf(key+".match.path_prefix", "may not contain *; use path for wildcards")
	}
	for j, meth := range m.Methods {
		if !validMethod(meth) {
			v.addf(fmt.Sprintf("%s.match.methods[%d]", key, j), "must be an upper-case HTTP method such as GET or POST, got %q", meth)
		}
	}
	if rc := r.Cache; rc != nil {
		if rc.TTL < 0 || rc.MaxTTL < 0 || rc.StaleIfError < 0 || rc.StaleWhileRevalidate < 0 {
			v.addf(key+".cache", "durations must be >= 0")
		}
		if rc.MaxEntryBytes < 0 || rc.MaxEntryBytes > 64<<20 {
			v.addf(key+".cache.max_entry_bytes", "must be 0..67108864 (0 means 1 MiB), got %d", rc.MaxEntryBytes)
		}
		for _, meth := range m.Methods {
			if meth != "GET" && meth != "HEAD" {
				v.addf(key+".cache", "only GET and HEAD are cached; this route also matches %s", meth)
			}
		}
	}
	if rs := r.Respond; rs != nil {
		if rs.Status < 400 || rs.Status > 599 {
			v.addf(key+".respond.status", "must be an error status 400..599 (the edge answers with its error page), got %d", rs.Status)
		}
		if len(rs.Message) > 512 || strings.ContainsFunc(rs.Message, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			v.addf(key+".respond.message", "must be one line of at most 512 characters")
		}
		if r.Cache != nil || len(r.Purge) > 0 || r.MaxInFlight != 0 {
			v.addf(key+".respond", "the edge answers this route itself and forwards nothing, so cache, purge and max_in_flight do not apply: remove them")
		}
	}
	for j, pp := range r.Purge {
		if !strings.HasPrefix(pp, "/") {
			v.addf(fmt.Sprintf("%s.purge[%d]", key, j), "must be a path prefix starting with /, got %q", pp)
		}
		if strings.Contains(pp, "$1") && !strings.Contains(m.Path, "*") {
			v.addf(fmt.Sprintf("%s.purge[%d]", key, j), "uses $1 but the route's match.path has no *")
		}
	}
	if r.MaxInFlight < 0 {
		v.addf(key+".max_in_flight", "must be >= 0 (0 means no cap), got %d", r.MaxInFlight)
	}
}

func (rl RateLimit) validate(v *validator, name string) {
	key := "ratelimits." + name
	if name == "none" {
		v.addf(key, `"none" is reserved: a route says ratelimit: none to turn limiting off`)
	}
	if rl.Rate <= 0 {
		v.addf(key+".rate", "must be > 0 requests per second, got %g", rl.Rate)
	}
	if rl.Burst < 1 {
		v.addf(key+".burst", "must be >= 1, got %d", rl.Burst)
	}
	if k := rl.Key; k != "" && k != "ip" && (!strings.HasPrefix(k, "header:") || len(k) == len("header:")) {
		v.addf(key+".key", `must be "ip" or "header:NAME", got %q`, k)
	}
	if rl.IPv6Prefix < 0 || rl.IPv6Prefix > 128 {
		v.addf(key+".ipv6_prefix", "must be 0..128 (0 means 64), got %d", rl.IPv6Prefix)
	}
	if rl.MaxClients < 0 || rl.IdleTTL < 0 {
		v.addf(key, "max_clients and idle_ttl must be >= 0")
	}
}

// resolveRoutePolicies checks that every route's rate limit policy exists.
// A file that defines only its own ratelimits (say just default) and keeps
// the embedded routes is not refused for it: those routes' policy falls
// back to default, and the operator is told in a notice.
func (c *Edge) resolveRoutePolicies(v *validator) {
	for i, r := range c.Routes {
		if r.RateLimit == "" || r.RateLimit == "none" {
			continue
		}
		if _, ok := c.RateLimits[r.RateLimit]; ok {
			continue
		}
		if !c.routesEmbedded {
			v.addf(fmt.Sprintf("routes[%d].ratelimit", i), "no policy %q in ratelimits (have: %s); define ratelimits.%s, name one of those, or write ratelimit: none",
				r.RateLimit, policyNames(c.RateLimits), r.RateLimit)
			continue
		}
		fallback := c.RoutePolicy(Route{})
		c.Routes[i].RateLimit = ""
		if fallback == "" {
			fallback = "none"
		}
		c.notices = append(c.notices, fmt.Sprintf("route %s (embedded default) names rate limit policy %q, which ratelimits does not define; it uses %s. Define ratelimits.%s to give it its own limit",
			r.Name, r.RateLimit, fallback, r.RateLimit))
	}
}

// parsePrefixes parses a list of CIDRs or addresses under key. The slice
// is always fresh: a copy of a running config must not write into its
// arrays.
func parsePrefixes(v *validator, key string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		p, err := parsePrefix(s)
		if err != nil {
			v.addf(fmt.Sprintf("%s[%d]", key, i), "must be a CIDR such as 10.0.0.0/8 or an address, got %q", s)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (t Timeouts) validate(v *validator) {
	for _, d := range []struct {
		key string
		v   Duration
	}{{"timeouts.connect", t.Connect}, {"timeouts.read_header", t.ReadHeader}, {"timeouts.read_body", t.ReadBody}, {"timeouts.upstream", t.Upstream}, {"timeouts.idle", t.Idle}, {"timeouts.write", t.Write}} {
		if d.v <= 0 {
			v.addf(d.key, "must be > 0, got %s", d.v)
		}
	}
}

func (l Limits) validate(v *validator) {
	if l.MaxHeaderBytes < 1024 || l.MaxHeaderBytes > 1<<20 {
		v.addf("limits.max_header_bytes", "must be 1024..1048576, got %d", l.MaxHeaderBytes)
	}
	if l.MaxBodyBytes < 0 || l.MaxBodyBytes > 64<<20 {
		v.addf("limits.max_body_bytes", "must be 0..67108864, got %d", l.MaxBodyBytes)
	}
}

func (p UpstreamPool) validate(v *validator) {
	if p.MaxConns < 1 {
		v.addf("upstream_pool.max_conns", "must be >= 1, got %d", p.MaxConns)
	}
	if p.MaxIdleTime <= 0 {
		v.addf("upstream_pool.max_idle_time", "must be > 0, got %s", p.MaxIdleTime)
	}
}

func (cs CacheStore) validate(v *validator) {
	if cs.MaxBytes < 1<<20 {
		v.addf("cache.max_bytes", "must be at least 1048576, got %d", cs.MaxBytes)
	}
	if cs.LastGoodEntries < 0 || cs.LastGoodBytes < 0 {
		v.addf("cache", "last_good_entries and last_good_bytes must be >= 0")
	}
}

func (r Retries) validate(v *validator) {
	if r.MaxRetries < 0 || r.MaxRetries > MaxRetriesLimit {
		v.addf("retries.max_retries", "must be 0..%d, got %d", MaxRetriesLimit, r.MaxRetries)
	}
	if r.PerTryTimeout < 0 {
		v.addf("retries.per_try_timeout", "must be >= 0 (0 means timeouts.upstream), got %s", r.PerTryTimeout)
	}
	if r.BudgetPercent < 0 || r.BudgetPercent > 100 {
		v.addf("retries.budget_percent", "must be 0..100, got %d", r.BudgetPercent)
	}
	if r.MinConcurrent < 0 {
		v.addf("retries.min_concurrent", "must be >= 0, got %d", r.MinConcurrent)
	}
	for i, m := range r.Methods {
		if !validMethod(m) || m == "POST" {
			v.addf(fmt.Sprintf("retries.methods[%d]", i), "must be an upper-case idempotent method such as PUT or DELETE (POST is retried only with an Idempotency-Key), got %q", m)
		}
	}
	for i, code := range r.OnStatus {
		if code < 500 || code > 599 {
			v.addf(fmt.Sprintf("retries.on_status[%d]", i), "must be a 5xx status, got %d", code)
		}
	}
}

func (o Outlier) validate(v *validator) {
	if o.ConsecutiveFailures < 0 {
		v.addf("outlier.consecutive_failures", "must be >= 0 (0 turns ejection off), got %d", o.ConsecutiveFailures)
	}
	if o.ConsecutiveFailures > 0 && o.BaseEjection <= 0 {
		v.addf("outlier.base_ejection", "must be > 0, got %s", o.BaseEjection)
	}
	if o.MaxEjection < o.BaseEjection {
		v.addf("outlier.max_ejection", "must be >= outlier.base_ejection (%s), got %s", o.BaseEjection, o.MaxEjection)
	}
	if o.MaxEjectedPercent < 0 || o.MaxEjectedPercent > 100 {
		v.addf("outlier.max_ejected_percent", "must be 0..100, got %d", o.MaxEjectedPercent)
	}
}

func (a AccessLog) validate(v *validator) {
	if a.Sample < 0 || a.Sample > 1 {
		v.addf("access_log.sample", "must be between 0 and 1, got %g", a.Sample)
	}
	if el := a.ErrorLimit; el.PerClient <= 0 || el.Burst < 1 || el.Total <= 0 {
		v.addf("access_log.error_limit", "per_client and total must be > 0 lines per second and burst >= 1, got per_client %g, burst %d, total %g", el.PerClient, el.Burst, el.Total)
	}
}

func checkAddr(v *validator, key, addr string) {
	if _, _, err := net.SplitHostPort(addr); err != nil || !validPort(addr) {
		v.addf(key, "must be host:port or :port, got %q", addr)
	}
}

// IsLoopbackAddr says whether host:port listens on loopback only: a
// loopback IP or "localhost". ":port" and "0.0.0.0:port" are every
// interface, so not.
func IsLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func validPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return true
}

// parsePrefix accepts a CIDR or a bare address (a /32 or /128).
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
