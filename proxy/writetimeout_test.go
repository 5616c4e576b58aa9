//go:build linux

// These tests need a client that takes bytes slower than the edge sends
// them, with nothing hiding in socket buffers: internal/sockettest makes
// one with SO_RCVBUF and TCP_MAXSEG set as Linux reads them (it doubles
// the buffer asked for; loopback's segments are 64 KiB; Windows has no
// TCP_MAXSEG), which is why they are Linux's. What they check is not: they
// build with the tag portable too, and make test-portable runs them on
// the fallback's connections.

package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/internal/sockettest"
)

// smallBufListener gives accepted connections a small send buffer.
type smallBufListener struct {
	net.Listener
	once sync.Once
}

func (l *smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(sockettest.BufSize)
	}
	return c, err
}

func (l *smallBufListener) Close() error {
	l.once.Do(func() { l.Listener.Close() })
	return nil
}

// serveSmallBuffers serves e's proxy on a second loopback listener whose
// connections have small send buffers, and returns its address.
func serveSmallBuffers(t *testing.T, e *testEdge) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := &smallBufListener{Listener: ln}
	done := make(chan struct{})
	go func() { e.p.Server().Serve(e.p.WrapListener(sl)); close(done) }()
	t.Cleanup(func() { sl.Close(); <-done })
	return ln.Addr().String()
}

func bigUpstream(t *testing.T) *testUpstream {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(bytes.Repeat([]byte{'z'}, n))
	}
	return u
}

// Issue 22.6: a client that pipelines requests for large answers and
// never reads them held its connection and a goroutine for ever. With
// timeouts.write the edge closes it once a send has waited that long for
// the client to take a byte, counts it, and frees the connection.
func TestClientWriteTimeoutClosesStalledPipeline(t *testing.T) {
	const timeout = time.Second
	u := bigUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.Timeouts.Write = config.Duration(timeout) })
	addr := serveSmallBuffers(t, e)
	c := sockettest.DialSmallWindow(t, addr)
	var pipeline strings.Builder
	for range 16 {
		pipeline.WriteString("GET /big?n=262144 HTTP/1.1\r\nHost: edge\r\n\r\n")
	}
	if _, err := c.Write([]byte(pipeline.String())); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	counter := e.p.metrics.errors[kindClientWrite]
	var took time.Duration
	for deadline := sent.Add(timeout + 10*time.Second); ; {
		if testCounter(counter) >= 1 {
			took = time.Since(sent)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no client_write_timeout %v after pipelining 4 MiB of answers and reading none (timeouts.write %v)", time.Since(sent), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if took < timeout || took > timeout+5*time.Second {
		t.Errorf("closed %v after the requests, want about %v", took, timeout)
	}
	// The edge has closed the connection: the client, reading at last,
	// finds the end of the stream (or a reset), not more answers than
	// the socket buffers held.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %d bytes", n)
	}
	if n >= 16*262144 {
		t.Errorf("the client could read %d bytes, all the answers; the edge was not stalled", n)
	}
	if got := testCounter(counter); got != 1 {
		t.Errorf("client_write_timeout = %v, want 1", got)
	}
}

// The write timeout is per stall, not per response or per connection: a
// slow but steady download several times longer than the timeout
// finishes. (The timeout is long enough that a busy machine pausing the
// reader for a second does not count as the client stalling.)
func TestClientWriteTimeoutSparesSlowReader(t *testing.T) {
	const timeout = 2 * time.Second
	u := bigUpstream(t)
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) { c.Timeouts.Write = config.Duration(timeout) })
	addr := serveSmallBuffers(t, e)
	c := sockettest.DialSmallWindow(t, addr)
	br := bufio.NewReaderSize(c, 4096)
	const size = 320 << 10 // at 8 KiB per 100 ms, 4 s
	if _, err := io.WriteString(c, "GET /big?n="+strconv.Itoa(size)+" HTTP/1.1\r\nHost: edge\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(30 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, buf := 0, make([]byte, 8<<10)
	for {
		time.Sleep(100 * time.Millisecond) // slow, but never stalled for the timeout
		n, err := resp.Body.Read(buf)
		got += n
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	took := time.Since(start)
	if got != size {
		t.Fatalf("got %d of %d bytes after %v", got, size, took)
	}
	if took < 3*timeout/2 {
		t.Fatalf("the download took %v, want it to outlast the %v timeout well for the test to mean anything", took, timeout)
	}
	if got := testCounter(e.p.metrics.errors[kindClientWrite]); got != 0 {
		t.Errorf("client_write_timeout = %v for a client that kept reading, want 0", got)
	}
}
