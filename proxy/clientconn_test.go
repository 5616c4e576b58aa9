package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/config"
)

// clientPair is a clientConn accepted on loopback and the client's end.
func clientPair(t *testing.T, slack time.Duration) (*clientConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	c, err := (&clientListener{Listener: ln, slack: slack}).Accept()
	if err != nil {
		t.Fatal(err)
	}
	cc, ok := c.(*clientConn)
	if !ok {
		t.Fatalf("accepted %T, want *clientConn", c)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, peer
}

// A keep-alive connection whose every read waits re-arms its deadline once
// per slack, not once per read.
func TestClientConnArmsReadDeadlineLazily(t *testing.T) {
	c, peer := clientPair(t, time.Second)
	const reads = 50
	go func() {
		for range reads {
			time.Sleep(2 * time.Millisecond) // so each read finds nothing first
			if _, err := peer.Write([]byte{'x'}); err != nil {
				return
			}
		}
	}()
	var b [1]byte // one byte a read, however the writes coalesce
	start := time.Now()
	for i := range reads {
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // as fasthttp does per request
		if _, err := c.Read(b[:]); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	// 50 reads over about 100 ms: one arm, and at most one more per slack
	// that passed, however long this machine took over them.
	elapsed := time.Since(start)
	if most := 2 + int(elapsed/time.Second); c.rearms > most || c.rearms >= reads {
		t.Errorf("%d reads over %v armed the socket's deadline %d times, want at most %d", reads, elapsed, c.rearms, most)
	}
}

// The deadline still fires, at most slack late.
func TestClientConnReadDeadlineFires(t *testing.T) {
	const slack = 20 * time.Millisecond
	c, _ := clientPair(t, slack)
	start := time.Now()
	c.SetReadDeadline(start.Add(100 * time.Millisecond))
	var b [16]byte
	_, err := c.Read(b[:])
	took := time.Since(start)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read with no data: %v, want a timeout", err)
	}
	if !strings.Contains(err.Error(), "read tcp") {
		t.Errorf("timeout reads %q, want a read error like any net.Conn's", err)
	}
	// Not early, and at most slack late: the deadline the socket had says
	// so, whatever the scheduler added on top.
	if took < 100*time.Millisecond {
		t.Errorf("timed out after %v, before the 100ms deadline", took)
	}
	if late := c.armedRD.Sub(start.Add(100 * time.Millisecond)); late < 0 || late > slack {
		t.Errorf("the socket's deadline was %v after the one asked for, want 0 .. %v", late, slack)
	}
}

// A deadline put on the socket for one wait that passes while nobody
// reads (a request busy with a slow upstream) does not fail a later read
// that wants a later deadline.
func TestClientConnStaleDeadlineIsNotATimeout(t *testing.T) {
	c, peer := clientPair(t, 10*time.Millisecond)
	var b [16]byte
	// The byte is sent once the read waits for it, so the read arms its
	// deadline (now+1s+slack), however the scheduler runs the two. Should
	// the sender take longer than that on a busy machine, the read times
	// out instead, and "a" comes with "b" below: either way a deadline is
	// armed, which is what the rest of the test is about.
	whenReadWaits(t, func() { peer.Write([]byte("a")) })
	c.SetReadDeadline(time.Now().Add(time.Second))
	want := "b"
	if _, err := c.Read(b[:]); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatal(err)
		}
		want = "ab"
	}
	if c.rearms != 1 {
		t.Fatalf("a read that waited armed %d deadlines, want 1", c.rearms)
	}
	time.Sleep(time.Until(c.armedRD) + 20*time.Millisecond) // the armed deadline passes, by the clock alone
	c.SetReadDeadline(time.Now().Add(time.Minute))
	whenReadWaits(t, func() { peer.Write([]byte("b")) })
	var got []byte
	for len(got) < len(want) {
		n, err := c.Read(b[:])
		if err != nil {
			t.Fatalf("read after a stale deadline: %q so far, then %v; want %q", got, err, want)
		}
		got = append(got, b[:n]...)
	}
	if slices.Sort(got); string(got) != want {
		t.Fatalf("read after a stale deadline: %q, want %q", got, want)
	}
	// And no deadline at all means none.
	c.SetReadDeadline(time.Time{})
	whenReadWaits(t, func() { peer.Write([]byte("c")) })
	if n, err := c.Read(b[:]); err != nil || string(b[:n]) != "c" {
		t.Fatalf("read without a deadline: %q, %v; want \"c\"", b[:n], err)
	}
}

// whenReadWaits calls send once some goroutine is parked in clientConn.Read
// waiting on the poller (its stack says so), so the read waits for what
// send sends, however the scheduler runs the two. If none parks within
// 30 s it sends anyway, and the test's own checks say what happened.
func whenReadWaits(t *testing.T, send func()) {
	t.Helper()
	go func() {
		defer send()
		buf := make([]byte, 1<<20)
		for range 30000 {
			n := runtime.Stack(buf, true)
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "[IO wait") && strings.Contains(g, "proxy.(*clientConn).Read(") {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
}

// A write goes out at once, whatever its size.
func TestClientConnWritesAtOnce(t *testing.T) {
	for _, n := range []int{1, clientWriteBuffer, 1 << 20} {
		c, peer := clientPair(t, time.Second)
		p := bytes.Repeat([]byte("a"), n)
		done := make(chan error, 1)
		go func() {
			got := make([]byte, n)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadFull(peer, got)
			if err == nil && !bytes.Equal(got, p) {
				err = errors.New("different bytes")
			}
			done <- err
		}()
		if w, err := c.Write(p); w != n || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", n, w, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("%d bytes written, the peer read: %v", n, err)
		}
	}
}

// A big response's full first buffer leaves with the rest in one system
// call; without flushBig's word a full buffer goes out at once.
func TestClientConnBigResponseOneSend(t *testing.T) {
	full := bytes.Repeat([]byte("a"), clientWriteBuffer)
	rest := bytes.Repeat([]byte("b"), 1000)
	c, peer := clientPair(t, time.Second)
	c.bigBody = true
	if n, err := c.Write(full); n != len(full) || err != nil || c.sends != 0 {
		t.Fatalf("Write(full) = %d, %v after %d sends; want it held", n, err, c.sends)
	}
	if n, err := c.Write(rest); n != len(rest) || err != nil {
		t.Fatalf("Write(rest) = %d, %v, want %d", n, err, len(rest))
	}
	if c.sends != 1 {
		t.Errorf("full buffer and rest took %d system calls, want 1", c.sends)
	}
	got := make([]byte, len(full)+len(rest))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, append(append([]byte{}, full...), rest...)) {
		t.Fatalf("peer got %v, not full+rest in order", err)
	}
	// The word is for one response only.
	if _, err := c.Write(full); err != nil || c.sends != 2 {
		t.Errorf("a full buffer of the next response: %d sends (%v), want sent at once", c.sends, err)
	}
}

// Pipelined requests: a big response goes out when it is ready, not when
// the next request's (slow) answer is.
func TestEdgePipelinedBigResponseNotHeldBack(t *testing.T) {
	// /slow answers only once the test has read the big response before
	// it: an edge that held the big one back until the slow one was ready
	// would never deliver it, and the read below would hit its deadline.
	u := newUpstream(t)
	var slow atomic.Pointer[chan struct{}]
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-*slow.Load()
		}
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Write(bytes.Repeat([]byte{'z'}, n))
	}
	e := startEdge(t, []*testUpstream{u}, nil, func(c *config.Edge) {
		c.Timeouts.Upstream = config.Duration(time.Minute)
	})
	for _, n := range []int{3000, 4000, 6000, 9000} {
		release := make(chan struct{})
		slow.Store(&release)
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /big?n=" + strconv.Itoa(n) + " HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
		}
		close(release)
		if err == nil && len(body) == n {
			// And the slow answer follows on the same connection.
			if resp, err = http.ReadResponse(br, nil); err == nil {
				_, err = io.ReadAll(resp.Body)
			}
		}
		c.Close()
		if err != nil || len(body) != n {
			t.Fatalf("a %d-byte response pipelined before one that waits for it: got %d bytes, %v", n, len(body), err)
		}
	}
}

// Through the edge, responses around and over the write buffer arrive
// whole, and a client that closes after each gets every byte.
func TestEdgeResponsesAroundWriteBuffer(t *testing.T) {
	u := newUpstream(t)
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(bytes.Repeat([]byte{'z'}, n))
	}
	e := startEdge(t, []*testUpstream{u}, nil)
	client := &http.Client{Timeout: 5 * time.Second}
	sizes := []int{0, 1, 2048, 8192, 12000, 100000, 1 << 20}
	for n := 3700; n <= 4100; n++ { // one of these makes header+body exactly a full buffer
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		for _, closing := range []bool{false, true} {
			req, _ := http.NewRequest("GET", e.url("/blob?n="+strconv.Itoa(n)), nil)
			req.Close = closing
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%d bytes (close %v): %v", n, closing, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || len(body) != n || bytes.Count(body, []byte{'z'}) != n {
				t.Fatalf("%d bytes (close %v): status %d, got %d bytes, %v", n, closing, resp.StatusCode, len(body), err)
			}
		}
	}
}
