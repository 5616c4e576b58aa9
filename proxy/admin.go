package proxy

import (
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
	return func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/metrics":
			metrics(ctx)
		case "/ping":
			p.ping(ctx)
		case "/config":
			out, err := p.cfg.Redacted()
			if err != nil {
				ctx.Error("rendering config: "+err.Error(), fasthttp.StatusInternalServerError)
				return
			}
			ctx.SetContentType("application/yaml; charset=utf-8")
			ctx.SetBody(out)
		case "/":
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("podium edge admin\n  /metrics  Prometheus metrics\n  /ping     pong, or 503 draining\n  /config   the running config\n")
		default:
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("not found: try /metrics, /ping or /config\n")
		}
	}
}
