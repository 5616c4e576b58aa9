package proxy

import (
	"bytes"
	"html"
	"strconv"

	"github.com/valyala/fasthttp"
)

// errorTitles are the headings of the edge's own HTML error pages.
var errorTitles = map[int]string{
	400: "Bad request",
	404: "Page not found",
	405: "Method not allowed",
	408: "Request timeout",
	413: "Request too large",
	429: "Too many requests",
	431: "Request headers too large",
	500: "Something went wrong",
	502: "The ticket service is unreachable",
	503: "The ticket service is busy",
	504: "The ticket service did not answer in time",
}

// wantsJSON reports whether an error for this request should be JSON:
// API paths and clients that ask for JSON get it; browsers get a page.
func wantsJSON(ctx *fasthttp.RequestCtx) bool {
	if bytes.HasPrefix(ctx.Path(), []byte("/api/")) {
		return true
	}
	accept := ctx.Request.Header.Peek("Accept")
	return bytes.Contains(accept, []byte("application/json")) && !bytes.Contains(accept, []byte("text/html"))
}

// writeError replaces whatever response was being built with the edge's
// own error: {"error": "...", "request_id": "..."} for JSON clients, a small
// HTML page otherwise; never a bare library error text.
func writeError(ctx *fasthttp.RequestCtx, status int, msg string, requestID []byte) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if len(requestID) > 0 {
		ctx.Response.Header.SetBytesV("X-Request-ID", requestID)
	}
	if wantsJSON(ctx) {
		ctx.SetContentType("application/json")
		b := ctx.Response.Body()[:0]
		b = append(b, `{"error":`...)
		b = strconv.AppendQuote(b, msg)
		b = append(b, `,"request_id":`...)
		b = strconv.AppendQuote(b, string(requestID))
		b = append(b, "}\n"...)
		ctx.Response.SetBodyRaw(b)
		return
	}
	ctx.SetContentType("text/html; charset=utf-8")
	title := errorTitles[status]
	if title == "" {
		title = fasthttp.StatusMessage(status)
	}
	var b bytes.Buffer
	b.WriteString(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>`)
	b.WriteString(strconv.Itoa(status) + " " + html.EscapeString(title))
	b.WriteString(` · Podium</title><style>body{font-family:system-ui,sans-serif;margin:0;color:#1d2433}header{background:#14213d;color:#fff;padding:1rem 1.5rem;font-weight:700;font-size:1.2rem}main{max-width:36rem;margin:3rem auto;padding:0 1rem}h1{font-size:1.6rem}p.id{color:#667;font-size:.85rem}a{color:#0b57d0}</style></head><body><header>Podium · Paris 2024 tickets</header><main><h1>`)
	b.WriteString(html.EscapeString(title))
	b.WriteString(`</h1><p>`)
	b.WriteString(html.EscapeString(sentence(msg)))
	b.WriteString(`</p><p><a href="/games">Back to the games</a></p><p class="id">Error `)
	b.WriteString(strconv.Itoa(status))
	if len(requestID) > 0 {
		b.WriteString(` · request `)
		b.WriteString(html.EscapeString(string(requestID)))
	}
	b.WriteString(`</p></main></body></html>`)
	ctx.Response.SetBodyRaw(b.Bytes())
}

// sentence capitalises a message for a page: the JSON error keeps the
// lower-case form errors take in Go; a page reads as prose.
func sentence(msg string) string {
	if msg == "" || msg[0] < 'a' || msg[0] > 'z' {
		return msg
	}
	return string(msg[0]-'a'+'A') + msg[1:] + "."
}
