package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/valyala/fasthttp"
)

// A request whose headers alone show its framing is wrong is answered 400
// and closed as soon as the headers are in: the edge never waits for a
// body it will not accept. Each case sends an incomplete body and the
// client then waits; with read_body at 60 s, an edge that read the body
// first would answer only after 60 s (408), as issue 14 found for CL+TE.
func TestFramingErrorsRejectedBeforeBody(t *testing.T) {
	u := newUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Timeouts.ReadBody = config.Duration(60 * time.Second)
	})
	// A quarter of read_body, and generous for a busy 2-core machine
	// running 38 of these at once: the answer needs no timer to fire,
	// only the headers to be parsed.
	const within = 15 * time.Second
	cases := []struct {
		name    string
		headers string // framing headers, each ending in CRLF
		body    string // the start of a body that never finishes
	}{
		{"CL then TE", "Content-Length: 20\r\nTransfer-Encoding: chunked\r\n", "5\r\nhel"},
		{"TE then CL", "Transfer-Encoding: chunked\r\nContent-Length: 20\r\n", "5\r\nhel"},
		{"CL 0 and TE", "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", "5\r\nhel"},
		{"TE gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", "5\r\nhel"},
		{"TE chunkedx", "Transfer-Encoding: chunkedx\r\n", "5\r\nhel"},
		{"TE chunked, chunked", "Transfer-Encoding: chunked, chunked\r\n", "5\r\nhel"},
		{"two TE headers", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhel"},
		{"TE identity and CL", "Transfer-Encoding: identity\r\nContent-Length: 20\r\n", "hel"},
		{"TE identity", "Transfer-Encoding: identity\r\n", "hel"},
		{"TE with space before colon", "Transfer-Encoding : chunked\r\n", "5\r\nhel"},
		{"CL with space before colon", "Content-Length : 20\r\n", "hel"},
		{"two identical CL", "Content-Length: 20\r\nContent-Length: 20\r\n", "hel"},
		{"two conflicting CL", "Content-Length: 20\r\nContent-Length: 30\r\n", "hel"},
		{"CL list", "Content-Length: 20, 20\r\n", "hel"},
		{"CL list conflicting", "Content-Length: 20, 30\r\n", "hel"},
		{"non-numeric CL", "Content-Length: 2O\r\n", "hel"},
		{"negative CL", "Content-Length: -20\r\n", "hel"},
		{"empty CL", "Content-Length: \r\n", "hel"},
		{"CL and TE with Expect", "Expect: 100-continue\r\nContent-Length: 20\r\nTransfer-Encoding: chunked\r\n", ""},
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range cases {
			for _, page := range []struct {
				path string
				json bool
			}{{"/api/games/1/buy", true}, {"/games/1/buy", false}} {
				t.Run(tc.name+" "+page.path, func(t *testing.T) {
					t.Parallel()
					raw := "POST " + page.path + " HTTP/1.1\r\nHost: edge\r\n" + tc.headers + "\r\n" + tc.body
					status, header, body, took, closed, err := rejectedEarly(e.addr, raw, within)
					if err != nil {
						t.Fatalf("%v after %v; want the edge's 400 within %v (read_body is 60s)", err, took, within)
					}
					if status != 400 {
						t.Errorf("status %d, want 400 (body %q)", status, body)
					}
					if !closed {
						t.Error("connection left open after the 400: the rest of the body would be read as a request")
					}
					if page.json {
						var eb struct {
							Error     string `json:"error"`
							RequestID string `json:"request_id"`
						}
						if err := json.Unmarshal([]byte(body), &eb); err != nil || !strings.HasPrefix(eb.Error, "malformed request") || eb.RequestID == "" {
							t.Errorf("body %q, want the edge's JSON error with a request_id", body)
						}
					} else if !strings.Contains(header.Get("Content-Type"), "text/html") || !strings.Contains(body, "<html") {
						t.Errorf("Content-Type %q body %q, want the edge's HTML page", header.Get("Content-Type"), body)
					}
					if strings.Contains(strings.ToLower(body), "fasthttp") {
						t.Errorf("body leaks the library's own text: %q", body)
					}
				})
			}
		}
	})
	if n := u.count.Load(); n != 0 {
		t.Errorf("upstream received %d requests, want 0", n)
	}
}

// rejectedEarly writes raw, which ends before its body does, and reads the
// edge's answer for up to within; closed says whether the edge then closed
// the connection.
func rejectedEarly(addr, raw string, within time.Duration) (status int, header http.Header, body string, took time.Duration, closed bool, err error) {
	c, err := net.DialTimeout("tcp", addr, within)
	if err != nil {
		return 0, nil, "", 0, false, err
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(within))
	if _, err := io.WriteString(c, raw); err != nil {
		return 0, nil, "", 0, false, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	took = time.Since(start)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = errors.New("no answer: the edge is waiting for the body")
		}
		return 0, nil, "", took, false, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// After the answer, the edge must close: a read sees EOF (or a reset),
	// not a deadline.
	_, rerr := br.ReadByte()
	closed = rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded)
	return resp.StatusCode, resp.Header, string(b), took, closed, nil
}

// The request-target is recovered from the error of any request fasthttp's
// header parser rejects, and it is the target the client sent: never
// something else from the request, whatever its bytes.
func FuzzParseErrorTarget(f *testing.F) {
	for _, s := range []string{
		"POST /api/games/1/buy HTTP/1.1\r\nHost: e\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"POST /api/x HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"POST /games/1 HTTP/1.1\r\nHost: e\r\nX: \", contents: \"GET /api/ HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
		"POST http://edge/api/x HTTP/1.1\r\nHost: e\r\nContent-Length: 2O\r\n\r\n",
		"HELLO\r\n\r\n",
		"GET /" + strings.Repeat("a", 300) + " HTTP/1.1\r\nHost: e\r\nHost: f\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h fasthttp.RequestHeader
		err := h.Read(bufio.NewReader(bytes.NewReader(b)))
		if err == nil {
			return
		}
		_ = parseReason(err)
		target := parseErrorTarget(err)
		if target == nil {
			return
		}
		line, _, _ := bytes.Cut(b, []byte{'\n'})
		fields := bytes.SplitN(line, []byte{' '}, 3)
		if len(fields) < 3 || !bytes.Equal(fields[1], target) {
			t.Errorf("target %q from a request whose first line is %q", target, line)
		}
	})
}
