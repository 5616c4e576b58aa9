package healthcheck

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podium-edge/podium/balancer"
)

// upstream serves h on a loopback port and returns its host:port.
func upstream(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// writeUntil writes body chunks of 1 KiB, flushing each (so net/http sends
// them chunked), until n bytes are out (n < 0: until the client goes away).
func writeUntil(w http.ResponseWriter, r *http.Request, n int) {
	chunk := bytes.Repeat([]byte("x"), 1024)
	for sent := 0; n < 0 || sent < n; sent += len(chunk) {
		if _, err := w.Write(chunk); err != nil || r.Context().Err() != nil {
			return
		}
		w.(http.Flusher).Flush()
	}
}

// TestProbeJudgesByStatus: a healthy upstream whose check path answers 200
// with a body over 4 KiB must stay up, as a probe client that refuses big
// bodies would mark it down. HAProxy's httpchk judges by status; so does
// the prober, whatever the body's size or shape, and within its timeout.
func TestProbeJudgesByStatus(t *testing.T) {
	big := strings.Repeat("p", 64<<10)
	cases := []struct {
		name    string
		handler http.HandlerFunc
		wantErr string // "" when the probe must pass
	}{
		{"small body", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong") }, ""},
		{"64 KiB body with Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			io.WriteString(w, big)
		}, ""},
		{"1 MiB chunked body", func(w http.ResponseWriter, r *http.Request) { writeUntil(w, r, 1<<20) }, ""},
		{"endless chunked body", func(w http.ResponseWriter, r *http.Request) { writeUntil(w, r, -1) }, ""},
		{"body that trickles past the timeout", func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			for r.Context().Err() == nil {
				if _, err := io.WriteString(w, "."); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(20 * time.Millisecond)
			}
		}, ""},
		{"8 KiB of headers", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Security-Policy", strings.Repeat("a", 8<<10))
			io.WriteString(w, "pong")
		}, ""},
		{"204 without a body", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }, ""},
		{"503 with a 64 KiB body", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, big)
		}, "status 503"},
		{"503 small", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "draining")
		}, "status 503"},
	}
	const timeout = 2 * time.Second
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := upstream(t, c.handler)
			p := &Prober{Timeout: timeout, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			p.init()
			start := time.Now()
			_, err := p.probe(&balancer.Host{Addr: addr})
			took := time.Since(start)
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("probe failed, want it to pass: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("probe error = %v, want one containing %q", err, c.wantErr)
			}
			// The deadline bounds the whole probe, body included (the
			// trickling body never ends by itself); the slack is for a busy
			// machine, not for the probe.
			if took > 4*timeout {
				t.Errorf("probe took %v, want it bounded by its %v timeout", took, timeout)
			}
		})
	}
}

// TestProbeDoesNotBufferBody: a huge body is neither refused nor held in
// memory; the probe reads a bounded prefix and drops the connection.
func TestProbeDoesNotBufferBody(t *testing.T) {
	const size = 64 << 20
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	p := &Prober{Timeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.init()
	h := &balancer.Host{Addr: addr}
	if _, err := p.probe(h); err != nil { // warm the client and the server
		t.Fatalf("probe of a 64 MiB body failed: %v", err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := p.probe(h)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("probe of a 64 MiB body failed: %v", err)
	}
	// Everything this process allocated during the probe, the server's
	// side included: a buffered body would be 64 MiB of it.
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("a probe of a 64 MiB body allocated %d bytes, want < 4 MiB", got)
	}
}
