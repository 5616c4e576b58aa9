package bench

import (
	"os"
	"os/exec"
	"strconv"
)

// Target names, in the order the comparison runs them.
const (
	TargetDirect  = "direct"
	TargetPodium  = "podium"
	TargetHAProxy = "haproxy"
	TargetNginx   = "nginx"
)

// AllTargets is the default target list.
var AllTargets = []string{TargetDirect, TargetPodium, TargetHAProxy, TargetNginx}

// CompareScenario is one named row group of the comparison report. A
// scenario this machine cannot run (no wrk, no database) is listed in the
// report with the reason and what to do, and not run.
type CompareScenario struct {
	Name  string
	Title string
	// Rounds is the scenario's default number of interleaved rounds: the
	// headline scenario gets three, the others one, so `make bench` stays
	// well under 10 minutes.
	Rounds int
	// Origin runs the scenario against `podium origin` (two instances on
	// the load CPU, sharing the MariaDB cluster named by PODIUM_DB_*)
	// instead of the synthetic upstream.
	Origin bool
	// WrkPath, when set, has the scenario driven by wrk (-t1, closed loop,
	// Connections connections, GET of this path) instead of `podium bench
	// run`: wrk is the load tool the edge's acceptance names, and, written
	// in C over epoll, it keeps every proxy saturated where the Go
	// generator tops out first. wrk sends every request from one address,
	// so Podium's config for these runs limits no client on GETs, as
	// HAProxy's and nginx's configs limit none (PeerConfig.OneClient).
	WrkPath string
	// args returns the `bench run` arguments for the measured phase.
	args func(o *CompareOptions) []string
}

// unavailable says why cs cannot run here, or "" when it can.
func (cs *CompareScenario) unavailable(o *CompareOptions) string {
	if cs.WrkPath != "" {
		if _, err := exec.LookPath(o.Wrk); err != nil {
			return "needs wrk: run `scripts/deps.sh peers` (as root) first"
		}
	}
	if cs.Origin && os.Getenv("PODIUM_DB_PRIMARY") == "" {
		return "needs the origin's database: run `scripts/mariadb-cluster.sh start` and `eval \"$(scripts/mariadb-cluster.sh env)\"` first (PODIUM_DB_PRIMARY is not set)"
	}
	return ""
}

// CompareScenarios are the comparison's scenarios, in report order.
var CompareScenarios = []CompareScenario{
	{
		Name: "proxied-get-wrk",
		Title: "Proxied GET under wrk: 2 KiB body from the synthetic upstream, 64 connections, `wrk -t1` closed loop on the load CPU (every proxy saturated). " +
			"Equivalent configs: no per-client rate limit in any of them, the same forwarding headers added by all three; Podium's metrics on, as always",
		Rounds:  5,
		WrkPath: "/bench/payload",
	},
	{
		Name: "cached-listing-wrk",
		Title: "Cached listing under wrk: GET /api/games?limit=50 (8 KiB JSON, Cache-Control max-age=2 from the synthetic upstream), 64 connections, `wrk -t1` closed loop. " +
			"Podium's cache vs nginx proxy_cache + proxy_cache_lock vs HAProxy's cache; no per-client rate limit in any of them",
		Rounds:  3,
		WrkPath: "/api/games?limit=50",
	},
	{
		Name:   "proxied-get",
		Title:  "Proxied GET, 2 KiB body from the synthetic upstream, 64 connections, closed loop (maximum throughput)",
		Rounds: 3,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "proxied-get", "-mode", "closed", "-connections", strconv.Itoa(o.Connections)}
		},
	},
	{
		Name:   "proxied-get-paced",
		Title:  "Proxied GET, 2 KiB body, 64 connections, open loop at a fixed rate every target sustains (latency at equal load)",
		Rounds: 1,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "proxied-get", "-mode", "open", "-connections", strconv.Itoa(o.Connections),
				"-rate", strconv.FormatFloat(o.PacedRate, 'f', -1, 64), "-ramp", "0"}
		},
	},
	{
		Name: "cached-listing",
		Title: "Cached listing: GET /api/games?limit=50 (8 KiB JSON, Cache-Control max-age=2 from the synthetic upstream), 64 connections, closed loop. " +
			"Podium's cache vs nginx proxy_cache + proxy_cache_lock vs HAProxy's cache; direct has no cache",
		Rounds: 1,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "cached-listing", "-connections", strconv.Itoa(o.Connections)}
		},
	},
	{
		Name: "ticket-drop-origin",
		Title: "ticket-drop through the real origin: two `podium origin` on the MariaDB primary + 2 replicas, 90% listing / 9% details / 1% buys, " +
			"ramping to the origin rate over 5 s, 64 connections; every proxy caches /api/games* as Podium's default routes do",
		Rounds: 1,
		Origin: true,
		args: func(o *CompareOptions) []string {
			return []string{"-scenario", "ticket-drop", "-connections", strconv.Itoa(o.Connections),
				"-rate", strconv.FormatFloat(o.OriginRate, 'f', -1, 64), "-ramp", "5s"}
		},
	},
}

func findCompareScenario(name string) *CompareScenario {
	for i := range CompareScenarios {
		if CompareScenarios[i].Name == name {
			return &CompareScenarios[i]
		}
	}
	return nil
}
