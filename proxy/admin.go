package proxy

import (
	"fmt"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// AdminHandler serves the admin listener (loopback by default, as Envoy's
// admin port is): /metrics, /ping and /config. It is kept off the public
// listener so that neither the running config nor the metrics leak.
func (p *Proxy) AdminHandler() fasthttp.RequestHandler {
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(p.metrics.Registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	profile := fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Index)
	cpuProfile := fasthttpadaptor.NewFastHTTPHandlerFunc(pprof.Profile)
	return func(ctx *fasthttp.RequestCtx) {
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
		switch string(ctx.Path()) {
		case "/metrics":
			metrics(ctx)
		case "/ping":
			p.ping(ctx)
		case "/cache/purge":
			p.adminPurge(ctx)
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
			ctx.SetBodyString("podium edge admin\n  /metrics  Prometheus metrics\n  /ping     pong, or 503 draining\n  /config   the running config\n  POST /cache/purge?prefix=/api/games  drop cached entries by path prefix\n  /debug/pprof/  Go profiles\n")
		default:
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("not found: try /metrics, /ping or /config\n")
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
