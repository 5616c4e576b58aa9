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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// Socket buffers in these tests are small, so that a response of a few
// hundred KiB cannot hide in the kernel and a send really waits for the
// client: Linux doubles the value asked for, so 16 KiB is 32 KiB.
const testSockBuf = 16 << 10

// writePair is a clientConn with a write timeout, accepted on loopback
// with a small send buffer, and the client's end with a small receive
// buffer; timedOut counts the listener's onWriteTimeout calls.
func writePair(t *testing.T, timeout time.Duration, timedOut *atomic.Int64) (*clientConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := dialSmallWindow(t, ln.Addr().String())
	l := &clientListener{Listener: ln, slack: timeout >> 6, writeTimeout: timeout,
		onWriteTimeout: func(net.Conn) { timedOut.Add(1) }}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cc := c.(*clientConn)
	t.Cleanup(func() { cc.Close() })
	cc.SetWriteBuffer(testSockBuf)
	return cc, peer
}

// A send the client takes nothing of fails after the write timeout (at
// most slack and scheduling later), as a timeout, and the hook is told
// once.
func TestClientConnWriteTimeoutFires(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var timedOut atomic.Int64
	c, _ := writePair(t, timeout, &timedOut) // the peer never reads
	start := time.Now()
	n, err := c.Write(make([]byte, 4<<20))
	took := time.Since(start)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "write tcp") {
		t.Fatalf("Write to a client that never reads = %d, %v; want a write timeout", n, err)
	}
	if n <= 0 || n >= 4<<20 {
		t.Errorf("wrote %d bytes before timing out, want some and not all", n)
	}
	if took < timeout || took > timeout+timeout>>6+2*time.Second {
		t.Errorf("timed out after %v, want %v..%v+slack (and scheduling)", took, timeout, timeout)
	}
	if got := timedOut.Load(); got != 1 {
		t.Errorf("onWriteTimeout called %d times, want 1", got)
	}
}

// A client that keeps up never has a write deadline put on its socket:
// the common response costs no clock read and no timer update.
func TestClientConnWriteDeadlineLazy(t *testing.T) {
	var timedOut atomic.Int64
	c, peer := writePair(t, time.Second, &timedOut)
	p := bytes.Repeat([]byte("a"), 2048)
	read := make(chan error)
	go func() {
		buf := make([]byte, len(p))
		for {
			_, err := io.ReadFull(peer, buf)
			read <- err
			if err != nil {
				return
			}
		}
	}()
	for i := range 200 {
		c.SetWriteDeadline(time.Time{}) // fasthttp's calls around a big response
		if _, err := c.Write(p); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if err := <-read; err != nil { // the client has it: the next write finds room
			t.Fatalf("peer read %d: %v", i, err)
		}
	}
	if c.wrearms != 0 {
		t.Errorf("200 writes the socket took at once put %d write deadlines on it, want 0", c.wrearms)
	}
	c.Close()
	<-read
}

// A write deadline armed for a send that waited, and that passes while
// the connection is idle, does not fail the next write: the runtime
// reports an expired deadline before a send even starts, and that one
// belongs to no send in progress.
func TestClientConnStaleWriteDeadline(t *testing.T) {
	const timeout = time.Second // the first send must finish within it, even on a busy machine
	var timedOut atomic.Int64
	c, peer := writePair(t, timeout, &timedOut)
	go func() { // a reader slower than the writer, so the send waits
		buf := make([]byte, 16<<10)
		for {
			time.Sleep(time.Millisecond)
			if _, err := peer.Read(buf); err != nil {
				return
			}
		}
	}()
	// More than the socket buffers hold: the send waits for the peer at
	// least once, under a deadline.
	if n, err := c.Write(make([]byte, 512<<10)); err != nil {
		t.Fatalf("Write to a reading client = %d, %v", n, err)
	}
	if c.wrearms == 0 || c.armedWD.IsZero() {
		t.Fatal("the send never waited under a write deadline; the test needs it to")
	}
	armed, rearms := c.armedWD, c.wrearms
	// Idle past it, until the runtime has marked it expired: a write
	// operation on the socket then fails before it starts.
	time.Sleep(time.Until(armed))
	for deadline := time.Now().Add(5 * time.Second); c.raw.Write(func(uintptr) bool { return true }) == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("the write deadline armed for %v has not fired 5 s later", armed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n, err := c.Write([]byte("next response")); err != nil {
		t.Fatalf("a write after the deadline armed for an earlier send passed = %d, %v; want it sent", n, err)
	}
	if c.wrearms != rearms+1 || !c.armedWD.IsZero() {
		t.Errorf("write deadlines put %d (armed %v), want the stale one cleared once", c.wrearms-rearms, c.armedWD)
	}
	if got := timedOut.Load(); got != 0 {
		t.Errorf("onWriteTimeout called %d times, want 0", got)
	}
}

// smallWindow is a Dialer.Control that sets SO_RCVBUF to testSockBuf
// and the segment size to Ethernet's before connecting. Loopback's 64 KiB
// segments would make a small window useless: a receiver opens a zero
// window again only once a whole segment fits (RFC 1122 §4.2.3.3, silly
// window avoidance), so the sender would stall on zero-window probes,
// with backoff, not on the reader.
func smallWindow(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = errors.Join(
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, testSockBuf),
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 1460))
	}); err != nil {
		return err
	}
	return serr
}

// smallBufListener gives accepted connections a small send buffer.
type smallBufListener struct {
	net.Listener
	once sync.Once
}

func (l *smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(testSockBuf)
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

// dialSmallWindow connects with a small receive buffer, set before the
// handshake so the window the client offers is small from the start (see
// smallWindow).
func dialSmallWindow(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: smallWindow}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
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
	c := dialSmallWindow(t, addr)
	var pipeline strings.Builder
	for range 16 {
		pipeline.WriteString("GET /big?n=262144 HTTP/1.1\r\nHost: edge\r\n\r\n")
	}
	if _, err := c.Write([]byte(pipeline.String())); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	counter := e.p.metrics.errors[errClientWrite]
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
	c := dialSmallWindow(t, addr)
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
	if got := testCounter(e.p.metrics.errors[errClientWrite]); got != 0 {
		t.Errorf("client_write_timeout = %v for a client that kept reading, want 0", got)
	}
}
