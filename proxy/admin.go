package proxy

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/podium-edge/podium/balancer"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// AdminHandler serves the admin listener (loopback by default, as Envoy's
// admin port is): /metrics, /ping, /config and /upstreams. It is kept off
// the public listener so that neither the running config nor the metrics
// nor the upstreams' addresses and errors leak.
func (p *Proxy) AdminHandler() fasthttp.RequestHandler {
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(p.metrics.Registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	profile := fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Index)
	cpuProfile := fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Profile)
	token := p.boot.AdminToken // admin_token needs a restart, as admin does
	return func(ctx *fasthttp.RequestCtx) {
		if !adminAllowed(ctx, token) {
			return
		}
		// Go's profiler, as every Go service exposes it: on the loopback
		// admin port only, where an operator can reach it and fans cannot.
		if path := string(ctx.Path()); strings.HasPrefix(path, "/debug/pprof/") {
			if path == "/debug/pprof/profile" {
				cpuProfile(ctx)
			} else {
				profile(ctx)
			}
			return
		}
		if path := string(ctx.Path()); strings.HasPrefix(path, "/rooms/") {
			p.adminRoom(ctx, strings.TrimPrefix(path, "/rooms/"))
			return
		}
		switch string(ctx.Path()) {
		case "/metrics":
			metrics(ctx)
		case "/ping":
			p.ping(ctx)
		case "/cache/purge":
			p.adminPurge(ctx)
		case "/upstreams":
			p.adminUpstreams(ctx)
		case "/rooms":
			p.adminRooms(ctx)
		case "/config":
			out, err := p.state.Load().cfg.Redacted()
			if err != nil {
				ctx.Error("rendering config: "+err.Error(), fasthttp.StatusInternalServerError)
				return
			}
			ctx.SetContentType("application/yaml; charset=utf-8")
			ctx.SetBody(out)
		case "/":
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("podium edge admin\n  /metrics  Prometheus metrics\n  /ping     pong, or 503 draining\n  /config   the running config\n  /rooms    each waiting room: status, rate, queue, watermark (JSON)\n  POST /rooms/NAME/pause|resume|close, POST /rooms/NAME/rate?admit_per_second=N\n  /upstreams  each upstream's health, last probe and its error, ejection (JSON; ?format=text for a line each)\n  POST /cache/purge?prefix=/api/games  drop cached entries by path prefix\n  /debug/pprof/  Go profiles\n")
		default:
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("not found: try /metrics, /ping, /config or /upstreams\n")
		}
	}
}

// adminPurge drops cached entries whose path starts with ?prefix=.
func (p *Proxy) adminPurge(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	if !ctx.IsPost() {
		ctx.Response.Header.Set("Allow", "POST")
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		ctx.SetBodyString(`{"error":"use POST /cache/purge?prefix=/path"}` + "\n")
		return
	}
	prefix := ctx.QueryArgs().Peek("prefix")
	if len(prefix) == 0 || prefix[0] != '/' {
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		ctx.SetBodyString(`{"error":"prefix must be a path starting with /, e.g. ?prefix=/api/games"}` + "\n")
		return
	}
	n := 0
	if p.store != nil {
		n = p.store.PurgePrefix(prefix)
		p.metrics.cachePurged.Add(float64(n))
	}
	fmt.Fprintf(ctx, `{"purged":%d,"prefix":%q}`+"\n", n, prefix)
}

// upstreamStatus is one upstream as /upstreams shows it: what an operator
// needs to see why it does or does not take traffic (Envoy's /clusters).
type upstreamStatus struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	// InRotation: healthy and not ejected, so a request may be sent to it.
	InRotation bool `json:"in_rotation"`
	Healthy    bool `json:"healthy"`
	// HealthChanged is when it last went up or down; absent if it never
	// has (a new upstream starts down: never up).
	HealthChanged *time.Time   `json:"health_changed,omitempty"`
	Ejected       bool         `json:"ejected"`
	EjectedUntil  *time.Time   `json:"ejected_until,omitempty"` // while ejected
	Ejections     int          `json:"ejections"`
	InFlight      int64        `json:"in_flight"`
	LastProbe     *probeStatus `json:"last_probe"` // null before the first probe
}

type probeStatus struct {
	Time                time.Time `json:"time"`
	RTTSeconds          float64   `json:"rtt_seconds"`
	Error               string    `json:"error,omitempty"` // absent when it passed
	ConsecutivePasses   int       `json:"consecutive_passes"`
	ConsecutiveFailures int       `json:"consecutive_failures"`

	rtt time.Duration // for the text form, which shows it as a duration
}

func newUpstreamStatus(h *balancer.Host, now time.Time) upstreamStatus {
	u := upstreamStatus{ID: h.ID, Address: h.Addr, Weight: h.Weight, Healthy: h.Healthy(),
		Ejected: h.Ejected(now), Ejections: h.Ejections(), InFlight: h.InFlight()}
	u.InRotation = u.Healthy && !u.Ejected
	if t := h.HealthChanged(); !t.IsZero() {
		u.HealthChanged = &t
	}
	if u.Ejected {
		t := h.EjectedUntil()
		u.EjectedUntil = &t
	}
	if pr := h.LastProbe(); pr != nil {
		u.LastProbe = &probeStatus{Time: pr.At, RTTSeconds: pr.RTT.Seconds(),
			ConsecutivePasses: pr.Passes, ConsecutiveFailures: pr.Fails, rtt: pr.RTT}
		if pr.Err != nil {
			u.LastProbe.Error = pr.Err.Error()
		}
	}
	return u
}

// adminUpstreams shows every upstream in the pool, in discovery's order:
// JSON by default, for jq and tooling; ?format=text gives one line each,
// for an operator at a terminal. A client told "no healthy ticket service
// instance" is owed a reason somewhere: it is here, and in the log.
func (p *Proxy) adminUpstreams(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.Set("Cache-Control", "no-store")
	now := time.Now()
	hosts := p.pool.Hosts()
	list := make([]upstreamStatus, len(hosts))
	for i, h := range hosts {
		list[i] = newUpstreamStatus(h, now)
	}
	switch format := string(ctx.QueryArgs().Peek("format")); format {
	case "", "json":
		out, err := json.MarshalIndent(struct {
			Upstreams []upstreamStatus `json:"upstreams"`
		}{list}, "", "  ")
		if err != nil {
			ctx.Error("rendering upstreams: "+err.Error(), fasthttp.StatusInternalServerError)
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(append(out, '\n'))
	case "text":
		ctx.SetContentType("text/plain; charset=utf-8")
		if len(list) == 0 {
			ctx.SetBodyString("no upstreams in the pool: see discovery in /config\n")
			return
		}
		b := ctx.Response.BodyWriter()
		for _, u := range list {
			fmt.Fprint(b, upstreamLine(u, now), "\n")
		}
	default:
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		ctx.SetContentType("text/plain; charset=utf-8")
		fmt.Fprintf(ctx, "unknown format %q: use ?format=json (the default) or ?format=text\n", format)
	}
}

// upstreamLine is one upstream in logfmt, the form of the edge's own log:
//
//	127.0.0.1:9002 id="o2" weight=1 state=down for=2m3s ejected=false ejections=0 in_flight=0 probe_age=1.2s rtt=412µs passes=0 fails=61 error="probe 127.0.0.1:9002/ping: status 503"
func upstreamLine(u upstreamStatus, now time.Time) string {
	var b strings.Builder
	b.WriteString(u.Address)
	if u.ID != u.Address {
		b.WriteString(" id=" + strconv.Quote(u.ID))
	}
	state := "down"
	switch {
	case u.InRotation:
		state = "up"
	case u.Healthy:
		state = "ejected"
	}
	fmt.Fprintf(&b, " weight=%d state=%s", u.Weight, state)
	if u.HealthChanged != nil {
		fmt.Fprintf(&b, " for=%s", now.Sub(*u.HealthChanged).Round(time.Millisecond))
	} else if !u.Healthy {
		b.WriteString(" never_up=true")
	}
	fmt.Fprintf(&b, " ejected=%t", u.Ejected)
	if u.EjectedUntil != nil {
		fmt.Fprintf(&b, " ejected_for=%s", u.EjectedUntil.Sub(now).Round(time.Millisecond))
	}
	fmt.Fprintf(&b, " ejections=%d in_flight=%d", u.Ejections, u.InFlight)
	if pr := u.LastProbe; pr != nil {
		fmt.Fprintf(&b, " probe_age=%s rtt=%s passes=%d fails=%d", now.Sub(pr.Time).Round(time.Millisecond),
			pr.rtt.Round(time.Microsecond), pr.ConsecutivePasses, pr.ConsecutiveFailures)
		if pr.Error != "" {
			b.WriteString(" error=" + strconv.Quote(pr.Error))
		}
	} else {
		b.WriteString(" probe=none_yet")
	}
	return b.String()
}

// adminAllowed answers, and returns false for, an admin request that must
// not be served:
//
//   - Without admin_token the listener is on loopback (config refuses
//     anything else), and a request must name it so: a Host other than a
//     loopback address or localhost is a browser led there by DNS
//     rebinding (a page whose name now resolves to 127.0.0.1), 403.
//   - With admin_token, every path but /ping needs "Authorization: Bearer
//     TOKEN" (compared in constant time), 401 otherwise, so Prometheus and
//     operators can reach a non-loopback admin port and nobody else can.
//   - An unsafe method (POST /cache/purge) sent by a browser from another
//     origin is refused, 403, as Go's http.CrossOriginProtection does it:
//     Sec-Fetch-Site must be same-origin or none, or, from a browser too
//     old to send it, Origin must match Host. curl and Prometheus send
//     neither header.
func adminAllowed(ctx *fasthttp.RequestCtx, token string) bool {
	deny := func(code int, msg string) bool {
		ctx.SetStatusCode(code)
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("admin: " + msg + "\n")
		return false
	}
	if token == "" {
		if !loopbackHost(ctx.Host()) {
			return deny(fasthttp.StatusForbidden, fmt.Sprintf("Host %q is not 127.0.0.1, [::1] or localhost; this listener answers loopback names only (DNS rebinding)", ctx.Host()))
		}
	} else if string(ctx.Path()) != "/ping" {
		got, ok := bytes.CutPrefix(ctx.Request.Header.Peek("Authorization"), []byte("Bearer "))
		if !ok || subtle.ConstantTimeCompare(got, []byte(token)) != 1 {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="podium-admin"`)
			return deny(fasthttp.StatusUnauthorized, "send Authorization: Bearer <admin_token>")
		}
	}
	if ctx.IsGet() || ctx.IsHead() || ctx.IsOptions() {
		return true
	}
	switch site := string(ctx.Request.Header.Peek("Sec-Fetch-Site")); site {
	case "same-origin", "none":
		return true
	case "":
		origin := ctx.Request.Header.Peek("Origin")
		if len(origin) == 0 {
			return true
		}
		if _, host, ok := bytes.Cut(origin, []byte("://")); ok && bytes.Equal(host, ctx.Host()) {
			return true
		}
		return deny(fasthttp.StatusForbidden, fmt.Sprintf("cross-origin %s from %q refused", ctx.Method(), origin))
	default:
		return deny(fasthttp.StatusForbidden, fmt.Sprintf("cross-origin %s (Sec-Fetch-Site: %s) refused", ctx.Method(), site))
	}
}

// loopbackHost says whether a Host header names this machine's loopback:
// 127.0.0.0/8, ::1 or localhost, with or without a port.
func loopbackHost(h []byte) bool {
	host := string(h)
	if hp, _, err := net.SplitHostPort(host); err == nil {
		host = hp
	} else {
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// adminRooms lists the waiting rooms (GET /rooms).
func (p *Proxy) adminRooms(ctx *fasthttp.RequestCtx) {
	now := p.clock.NowMs()
	views := []roomView{}
	for _, rs := range p.state.Load().rooms {
		views = append(views, rs.view(now))
	}
	writeJSON(ctx, map[string]any{"rooms": views})
}

// adminRoom changes one room: POST /rooms/NAME/pause, /resume, /close
// (sold out) and /rate?admit_per_second=N. The change is saved in the
// state dir per room and epoch, so a restart keeps it; a reload keeps
// it too, except that a changed admit_per_second replaces an admin rate
// and a changed epoch or opening starts the room anew.
func (p *Proxy) adminRoom(ctx *fasthttp.RequestCtx, rest string) {
	fail := func(status int, msg string) {
		ctx.SetStatusCode(status)
		writeJSON(ctx, map[string]string{"error": msg})
	}
	name, action, _ := strings.Cut(rest, "/")
	var rs *roomState
	for _, r := range p.state.Load().rooms {
		if r.cfg.Name == name {
			rs = r
		}
	}
	if rs == nil {
		fail(fasthttp.StatusNotFound, fmt.Sprintf("no waiting room %q; GET /rooms lists them", name))
		return
	}
	if !ctx.IsPost() {
		ctx.Response.Header.Set("Allow", "POST")
		fail(fasthttp.StatusMethodNotAllowed, "use POST /rooms/"+name+"/pause, /resume, /close or /rate?admit_per_second=N")
		return
	}
	rt := rs.rt
	switch action {
	case "pause":
		rt.setStatus(roomPaused, p.clock.NowMs())
	case "resume":
		rt.setStatus(roomOpen, p.clock.NowMs())
		rt.soldOut.clear() // the operator knows better than the marks
		rt.marksCleared.Store(p.clock.NowMs())
	case "close":
		rt.setStatus(roomClosed, p.clock.NowMs())
	case "rate":
		v := string(ctx.QueryArgs().Peek("admit_per_second"))
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0) || r > 1e6 {
			fail(fasthttp.StatusBadRequest, fmt.Sprintf("admit_per_second must be a number of visitors a second, > 0 and at most 1000000, got %q", v))
			return
		}
		if err := rt.gate.SetRate(r); err != nil {
			fail(fasthttp.StatusBadRequest, err.Error())
			return
		}
	default:
		fail(fasthttp.StatusNotFound, fmt.Sprintf("no action %q; use pause, resume, close or rate?admit_per_second=N", action))
		return
	}
	p.log.Info("waiting room changed by the admin API", "room", name, "action", action, "status", roomStatusNames[rt.status.Load()], "admit_per_second", rt.gate.Rate())
	if err := p.saveControl(rt); err != nil {
		p.log.Error("waiting room: the admin API's change holds on this edge until it restarts: saving it failed", "room", name, "error", err.Error())
		fail(fasthttp.StatusInternalServerError, "applied on this edge, but not saved, so a restart loses it: "+err.Error())
		return
	}
	sctx, cancel := context.WithTimeout(p.bg, shareControlTimeout)
	defer cancel()
	if err := p.shareControl(sctx, rt); err != nil {
		p.log.Error("waiting room: the admin API's change holds on this edge only: sharing it with the room's other edges failed", "room", name, "error", err.Error())
		fail(fasthttp.StatusServiceUnavailable, "applied and saved on this edge, but not on the room's other edges (Consul): "+err.Error()+"; try again")
		return
	}
	writeJSON(ctx, rs.view(p.clock.NowMs()))
}
