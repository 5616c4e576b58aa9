package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestLoadFileBad(t *testing.T) {
	// Each bad file must be refused with an error that names the file, the
	// line (where the key is present) and the key, and says what is allowed.
	tests := []struct {
		file string
		want []string
	}{
		{"zero-interval.bad.yaml", []string{"zero-interval.bad.yaml:4: healthcheck.interval: must be > 0, got 0s"}},
		{"unknown-key.bad.yaml", []string{"line 3", "unknown key intreval"}},
		{"broken.bad.yaml", []string{"parsing YAML file testdata/broken.bad.yaml", "line 1: did not find expected key"}},
		{"bare-number.bad.yaml", []string{"line 2", `"2" is not a duration`}},
		{"timeout-over-interval.bad.yaml", []string{":3: healthcheck.timeout: must not exceed healthcheck.interval (1s), got 2s"}},
		{"zero-weight.bad.yaml", []string{":4: discovery.static[1]: weight must be 1..1000, got 0"}},
		{"no-port.bad.yaml", []string{"discovery.static[0]: must be host:port", `"localhost"`}},
		{"no-upstreams.bad.yaml", []string{":2: discovery.static: must list at least one upstream"}},
		{"path-and-prefix.bad.yaml", []string{"routes[0].match: has both path and path_prefix"}},
		{"lower-method.bad.yaml", []string{"routes[0].match.methods[0]: must be an upper-case HTTP method", `"get"`}},
		{"bad-cidr.bad.yaml", []string{":1: trusted_proxies[0]: must be a CIDR"}},
		{"tiny-header-limit.bad.yaml", []string{":2: limits.max_header_bytes: must be 1024..1048576, got 100"}},
		{"listen-no-colon.bad.yaml", []string{":1: listen: must be host:port or :port"}},
		{"algorithm.bad.yaml", []string{"balancer.algorithm: must be least_conn", "round_robin"}},
		{"dup-route.bad.yaml", []string{":3: routes[1].name:", "used by an earlier route"}},
		{"retry-post.bad.yaml", []string{":2: retries.methods[0]:", "POST is retried only with an Idempotency-Key"}},
		{"ejection-cap.bad.yaml", []string{":3: outlier.max_ejection: must be >= outlier.base_ejection (30s), got 10s"}},
		{"admin-public.bad.yaml", []string{`admin-public.bad.yaml:2: admin: "0.0.0.0:9901" is reachable beyond this host`, "bind it to 127.0.0.1:PORT, or set admin_token"}},
		{"admin-short-token.bad.yaml", []string{"admin-short-token.bad.yaml:2: admin_token: must be at least 16 characters", "got 7 characters"}},
		{"unknown-policy.bad.yaml", []string{":2: routes[0].ratelimit: no policy \"typo\" in ratelimits (have: buy, default); define ratelimits.typo, name one of those, or write ratelimit: none"}},
		{"zero-rate.bad.yaml", []string{":2: ratelimits.buy.rate: must be > 0"}},
		{"bad-key.bad.yaml", []string{`ratelimits.api.key: must be "ip" or "header:NAME", got "cookie:x"`}},
		{"static-and-consul.bad.yaml", []string{":1: discovery: set static or consul, not both"}},
		{"consul-address.bad.yaml", []string{":3: discovery.consul.address: must be host:port"}},
		{"rise-string.bad.yaml", []string{"line 2", "cannot unmarshal"}},
		{"respond-status.bad.yaml", []string{":2: routes[0].respond.status: must be an error status 400..599", "got 200"}},
		{"respond-cache.bad.yaml", []string{":4: routes[0].respond: the edge answers this route itself", "remove them"}},
		{"zero-write-timeout.bad.yaml", []string{":2: timeouts.write: must be > 0, got 0s"}},
		{"error-limit.bad.yaml", []string{":2: access_log.error_limit: per_client and total must be > 0", "got per_client 0"}},
		{"wr-no-key-file.bad.yaml", []string{"wr-no-key-file.bad.yaml:2: waiting_rooms[0].key_file: is required"}},
		// The key file's own error names the key file and its line.
		{"wr-key-broken.bad.yaml", []string{"wr-key-broken.bad.yaml:5: waiting_rooms[0].key_file: testdata/wr-broken.keys:3: unknown directive \"sing\""}},
		{"wr-key-missing.bad.yaml", []string{":2: waiting_rooms[0].key_file: reading key file: open testdata/nothing-here.keys"}},
		{"wr-bad-path.bad.yaml", []string{":5: waiting_rooms[0].paths[1]: room path \"/games/1*/buy\": * must be a whole segment"}},
		{"wr-dup-name.bad.yaml", []string{":3: waiting_rooms[1].name: \"final\" is used by an earlier room"}},
		{"wr-dup-path.bad.yaml", []string{":3: waiting_rooms[1].paths[0]: \"/Games//*/buy/\" is already guarded by room \"final\""}},
		{"wr-rate.bad.yaml", []string{":4: waiting_rooms[0].admit_per_second: must be a number of visitors a second, > 0", "got 0"}},
		{"wr-max-active.bad.yaml", []string{":5: waiting_rooms[0].max_active: needs session"}},
		{"wr-opens-at.bad.yaml", []string{":5: waiting_rooms[0].opens_at: must be an RFC 3339 time", `"26 July 2024 10:00"`}},
		{"wr-refresh.bad.yaml", []string{":5: waiting_rooms[0].refresh: must be 1s..1m0s, got 2m0s"}},
		{"wr-store-no-consul.bad.yaml", []string{"wr-store-no-consul.bad.yaml:4: waiting_room_store.consul: needs discovery.consul"}},
		{"wr-store-prefix.bad.yaml", []string{"wr-store-prefix.bad.yaml:5: waiting_room_store.prefix: must be a Consul KV folder"}},
		{"wr-unknown-key.bad.yaml", []string{"line 4", "unknown key admit_per_sec"}},
		{"wr-name.bad.yaml", []string{":2: waiting_rooms[0].name: must be 1 to 64 letters, digits, _ or -", `"the final"`}},
		{"wr-epoch.bad.yaml", []string{"line 2", "cannot unmarshal", "-1"}},
		{"wr-rate-high.bad.yaml", []string{":4: waiting_rooms[0].admit_per_second: must be a number of visitors a second, > 0 and at most 1000000", "got 2e+06"}},
		{"wr-max-active-negative.bad.yaml", []string{":5: waiting_rooms[0].max_active: must be >= 0", "got -3"}},
		{"wr-session-short.bad.yaml", []string{":6: waiting_rooms[0].session: must be at least 1s, got 500ms"}},
		{"wr-session-refresh.bad.yaml", []string{":6: waiting_rooms[0].session: must be at least twice refresh (30s)", "got 45s"}},
		{"wr-no-paths.bad.yaml", []string{":3: waiting_rooms[0].paths: must list at least one path"}},
		{"wr-no-state-dir.bad.yaml", []string{"wr-no-state-dir.bad.yaml:2: waiting_rooms: need waiting_room_state_dir"}},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := LoadFile(filepath.Join("testdata", tt.file))
			if err == nil {
				t.Fatalf("LoadFile(%s) = %+v, want an error", tt.file, cfg)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
	// Every testdata/*.bad.yaml must be in the table, so none is forgotten.
	files, _ := filepath.Glob("testdata/*.bad.yaml")
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no case in the table", f)
		}
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load("e.yaml", []byte("healthcheck: {interval: 0s, rise: 0}\nlimits: {max_body_bytes: -1}\n"))
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *config.Error", err)
	}
	var keys []string
	for _, p := range ce.Problems {
		keys = append(keys, p.Key)
	}
	got, want := strings.Join(keys, ","), "healthcheck.interval,healthcheck.rise,limits.max_body_bytes"
	if got != want {
		t.Errorf("problem keys = %s, want %s", got, want)
	}
}

func TestLoadFileGood(t *testing.T) {
	cfg, err := LoadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", cfg.Listen, "127.0.0.1:18080"},
		{"static[1].weight", cfg.Discovery.Static[1].Weight, 2},
		{"static[0].weight", cfg.Discovery.Static[0].Weight, 1},
		{"slow_start", cfg.Balancer.SlowStart.D(), 10 * time.Second},
		{"hc.timeout", cfg.HealthCheck.Timeout.D(), 250 * time.Millisecond},
		{"route name default", cfg.Routes[3].Name, "/api/games"},
		{"route name given", cfg.Routes[2].Name, "buy"},
		{"respond", *cfg.Routes[0].Respond, Respond{Status: 404}},
		{"respond message", *cfg.Routes[1].Respond, Respond{Status: 503, Message: "closed for maintenance"}},
		{"forwarding route", cfg.Routes[2].Respond == nil, true},
		{"write", cfg.Timeouts.Write.D(), 15 * time.Second},
		{"error_limit", cfg.AccessLog.ErrorLimit, LogLimit{PerClient: 2, Burst: 20, Total: 50}},
		{"trusted", len(cfg.TrustedPrefixes()), 2},
		{"::1 is a /128", cfg.TrustedPrefixes()[1].Bits(), 128},
		{"read_body", cfg.Timeouts.ReadBody.D(), 5 * time.Second},
		{"max_conns", cfg.UpstreamPool.MaxConns, 64},
		{"access_log", cfg.AccessLog.Enabled, false},
		{"rooms", len(cfg.WaitingRooms), 2},
		{"room paths", len(cfg.WaitingRooms[0].Patterns()), 2},
		{"room path form", cfg.WaitingRooms[0].Patterns()[1].RoomForm(), "/api/games/*/buy"},
		{"room rate", cfg.WaitingRooms[0].AdmitPerSecond, 500.0},
		{"room max_active", cfg.WaitingRooms[0].MaxActive, 2000},
		{"room session", cfg.WaitingRooms[0].Session.D(), 5 * time.Minute},
		{"room opens_at", cfg.WaitingRooms[0].OpensAtTime().Equal(time.Date(2024, 7, 26, 10, 0, 0, 0, time.UTC)), true},
		{"room key file, from the config's directory", cfg.WaitingRooms[0].KeyFile, filepath.Join("testdata", "wr.keys")},
		{"room keys read", cfg.WaitingRooms[0].Keys() != nil, true},
		{"room refresh", cfg.WaitingRooms[0].Refresh.D(), 3 * time.Second},
		{"room epoch", cfg.WaitingRooms[0].Epoch, uint32(7)},
		{"default refresh", cfg.WaitingRooms[1].Refresh.D(), DefaultWaitingRoomRefresh},
		{"default session", cfg.WaitingRooms[1].Session.D(), DefaultWaitingRoomSession},
		{"default epoch", cfg.WaitingRooms[1].Epoch, uint32(DefaultWaitingRoomEpoch)},
		{"no opening", cfg.WaitingRooms[1].OpensAtTime().IsZero(), true},
		{"state dir", cfg.WaitingRoomStatePath(), "/var/lib/podium/waitroom"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestRateLimitsReplaceDefaults(t *testing.T) {
	cfg, err := Load("e.yaml", []byte("ratelimits:\n  api: {rate: 5, burst: 10}\nroutes:\n  - {match: {path_prefix: /}, ratelimit: api}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RateLimits) != 1 || cfg.RoutePolicy(cfg.Routes[0]) != "api" {
		t.Errorf("ratelimits = %v, want only api", cfg.RateLimits)
	}
	def := DefaultEdge()
	if got := def.RoutePolicy(def.Routes[2]); got != "default" {
		t.Errorf("a route naming no policy gets %q, want default", got)
	}
	if got := def.RoutePolicy(Route{RateLimit: "none"}); got != "" {
		t.Errorf("ratelimit: none gives %q", got)
	}
}

func TestConsulReplacesStaticAndTokenElided(t *testing.T) {
	cfg, err := Load("e.yaml", []byte("discovery:\n  consul: {service: podium-origin, token: s3cret, register: {}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Discovery.Static) != 0 || cfg.Discovery.Consul == nil || cfg.Discovery.Consul.Register == nil {
		t.Fatalf("discovery = %+v, want consul only", cfg.Discovery)
	}
	out, _ := cfg.Redacted()
	if strings.Contains(string(out), "s3cret") || !strings.Contains(string(out), "<elided>") {
		t.Errorf("/config shows the token:\n%s", out)
	}
	if cfg.Discovery.Consul.Token != "s3cret" {
		t.Error("Redacted changed the running config")
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	cfg, err := Load("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultEdge()
	if cfg.Listen != def.Listen || cfg.HealthCheck != def.HealthCheck || len(cfg.Discovery.Static) != len(DefaultStaticUpstreams) {
		t.Errorf("empty config = %+v, want the defaults", cfg)
	}
}

func TestDefaultsValidate(t *testing.T) {
	// The embedded default must itself pass validation.
	v := &validator{}
	DefaultEdge().validate(v)
	if len(v.problems) > 0 {
		t.Fatalf("DefaultEdge does not validate: %+v", v.problems)
	}
}

func TestRedactedRoundTrips(t *testing.T) {
	cfg, err := LoadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Load("redacted.yaml", out)
	if err != nil {
		t.Fatalf("the /config output does not load back: %v\n%s", err, out)
	}
	if again.HealthCheck != cfg.HealthCheck || again.Timeouts != cfg.Timeouts {
		t.Errorf("round trip changed the config:\n%s", out)
	}
	// The whole effective config, every section, must survive /config:
	// what an operator copies from a running edge is what it ran.
	for _, f := range []string{"testdata/good.yaml", "testdata/only-default-ratelimit.yaml", "../deploy/edge/edge.yaml", "../deploy/edge/demo.yaml", ""} {
		var cfg *Edge
		if f == "" {
			cfg = DefaultEdge()
		} else if cfg, err = LoadFile(f); err != nil {
			t.Fatal(err)
		}
		out, err := cfg.Redacted()
		if err != nil {
			t.Fatal(err)
		}
		again, err := Load("redacted.yaml", out)
		if err != nil {
			t.Fatalf("%s: the /config output does not load back: %v\n%s", f, err, out)
		}
		// Unset and empty lists print alike; everything else must match.
		if diff := cmp.Diff(cfg, again, cmpopts.IgnoreUnexported(Edge{}, WaitingRoom{}), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: round trip changed the config (-before +after):\n%s", f, diff)
		}
		if out2, _ := again.Redacted(); string(out2) != string(out) {
			t.Errorf("%s: printing the reloaded config differs:\n%s\nthen\n%s", f, out, out2)
		}
	}
}

func TestExampleConfigsLoad(t *testing.T) {
	// Every example config shipped in deploy/ must load.
	files, _ := filepath.Glob("../deploy/edge/*.yaml")
	for _, f := range files {
		if _, err := LoadFile(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := os.Stat("../deploy/edge/edge.yaml"); err != nil {
		t.Errorf("the documented example deploy/edge/edge.yaml is missing: %v", err)
	}
}

// TestOnlyDefaultRateLimit: a file that defines only ratelimits.default and
// keeps the embedded routes loads; the purchase routes fall back to the
// default policy and the fallback is reported, not silent. The same policy
// name in a route the file writes itself is still an error naming the fix.
func TestOnlyDefaultRateLimit(t *testing.T) {
	cfg, err := LoadFile("testdata/only-default-ratelimit.yaml")
	if err != nil {
		t.Fatalf("LoadFile: %v", err)
	}
	fellBack := 0
	for _, r := range cfg.Routes {
		if got, want := cfg.RoutePolicy(r), "default"; got != want {
			t.Errorf("route %s: policy %q, want %q", r.Name, got, want)
		}
		if r.Name == "buy" || r.Name == "buy_page" {
			fellBack++
		}
	}
	if fellBack != 2 {
		t.Fatalf("found %d purchase routes in the embedded defaults, want 2", fellBack)
	}
	notes := strings.Join(cfg.Notices(), "\n")
	for _, want := range []string{"route buy (embedded default)", "route buy_page (embedded default)", `"buy"`, "uses default", "ratelimits.buy"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notices %q lack %q", notes, want)
		}
	}
	if got := cfg.Validate("again"); got != nil || len(cfg.Notices()) != 2 {
		t.Errorf("validating again: err %v, %d notices; want nil and the same 2", got, len(cfg.Notices()))
	}
	// The effective config round-trips: what /config prints loads back.
	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load("effective", out); err != nil {
		t.Errorf("effective config does not load back: %v\n%s", err, out)
	}

	_, err = Load("explicit.yaml", []byte("ratelimits:\n  default: {rate: 20, burst: 40}\nroutes:\n  - {match: {path: /api/games/*/buy}, ratelimit: buy}\n"))
	if err == nil || !strings.Contains(err.Error(), `routes[0].ratelimit: no policy "buy" in ratelimits (have: default); define ratelimits.buy`) {
		t.Errorf("a route the file writes naming a missing policy: err %v, want one naming the fix", err)
	}
	if d := DefaultEdge(); len(d.Notices()) != 0 || d.Validate("defaults") != nil || len(d.Notices()) != 0 {
		t.Errorf("the embedded defaults need no fallback; notices %v", d.Notices())
	}
}

// TestAdminAddress: the admin listener stays on loopback unless a token
// guards it, and the token never leaves through /config.
func TestAdminAddress(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		ok   bool
	}{
		{"admin: 127.0.0.1:9901\n", true},
		{"admin: 127.0.0.53:9901\n", true},
		{"admin: \"[::1]:9901\"\n", true},
		{"admin: localhost:9901\n", true},
		{"admin: \":9901\"\n", false},
		{"admin: 0.0.0.0:9901\n", false},
		{"admin: \"[::]:9901\"\n", false},
		{"admin: 10.1.2.3:9901\n", false},
		{"admin: 10.1.2.3:9901\nadmin_token: 0123456789abcdef0123\n", true},
	} {
		_, err := Load("edge.yaml", []byte(tc.yaml))
		if got := err == nil; got != tc.ok {
			t.Errorf("%q: accepted %v, want %v (err %v)", tc.yaml, got, tc.ok, err)
		}
	}
	cfg, err := Load("edge.yaml", []byte("admin: 10.1.2.3:9901\nadmin_token: 0123456789abcdef0123\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "0123456789abcdef0123") || !strings.Contains(string(out), "admin_token: <elided>") {
		t.Errorf("/config shows the admin token or hides that one is set:\n%s", out)
	}
}

// The embedded default answers the origins' internal endpoints itself,
// before the catch-all route could forward them, and /config shows that
// in a form that loads back (TestRedactedRoundTrips compares the rest).
func TestDefaultRoutesHideInternalPaths(t *testing.T) {
	def := DefaultEdge()
	find := func(routes []Route, name string) (int, *Route) {
		for i := range routes {
			if routes[i].Name == name {
				return i, &routes[i]
			}
		}
		return -1, nil
	}
	catchAll, _ := find(def.Routes, DefaultRouteName)
	for _, tc := range []struct{ name, prefix string }{{"internal_metrics", "/metrics"}, {"internal_debug", "/debug"}} {
		i, r := find(def.Routes, tc.name)
		if r == nil || r.Match.PathPrefix != tc.prefix || r.Respond == nil || *r.Respond != (Respond{Status: 404}) || len(r.Match.Methods) != 0 {
			t.Fatalf("default route %s = %+v, want path_prefix %s answered 404 for every method", tc.name, r, tc.prefix)
		}
		if i > catchAll {
			t.Errorf("route %s comes after the catch-all %s, which would forward %s", tc.name, DefaultRouteName, tc.prefix)
		}
	}
	out, err := def.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "respond:\n") || !strings.Contains(string(out), "status: 404") {
		t.Errorf("/config does not show the respond routes:\n%s", out)
	}
	again, err := Load("config.yaml", out)
	if err != nil {
		t.Fatalf("/config does not load back: %v", err)
	}
	if _, r := find(again.Routes, "internal_metrics"); r == nil || r.Respond == nil || *r.Respond != (Respond{Status: 404}) {
		t.Errorf("after the round trip internal_metrics = %+v", r)
	}
}
