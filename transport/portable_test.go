package transport

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// The connections these tests run on: the portable ones on every system,
// and on Linux the raw ones too, through the same API.
var modes = []struct {
	name  string
	plain bool
}{{"portable", true}, {"native", false}}

// acceptPair accepts one client connection through a Listener and returns
// it with the client's end.
func acceptPair(t testing.TB, l *Listener) (net.Conn, net.Conn) {
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
	l.Listener = ln
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, isPlain := c.(*plainClientConn); isPlain != (l.plain || !native) {
		t.Fatalf("accepted a %T with plain %v (native %v)", c, l.plain, native)
	}
	return c, peer
}

// A send the client takes nothing of fails after the write timeout, as a
// timeout, and the hook is told once; a client that reads gets every byte.
func TestClientWriteTimeout(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			const timeout = 200 * time.Millisecond
			var timedOut atomic.Int64
			l := &Listener{Slack: timeout >> 6, WriteTimeout: timeout, plain: m.plain,
				OnWriteTimeout: func(net.Conn) { timedOut.Add(1) }}
			c, _ := acceptPair(t, l) // the peer never reads
			start := time.Now()
			n, err := c.Write(make([]byte, 64<<20))
			took := time.Since(start)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "write tcp") {
				t.Fatalf("Write to a client that never reads = %d, %v; want a write timeout", n, err)
			}
			if n <= 0 || n >= 64<<20 {
				t.Errorf("wrote %d bytes before timing out, want some and not all", n)
			}
			if took < timeout || took > timeout+timeout>>6+2*time.Second {
				t.Errorf("timed out after %v, want %v..%v+slack (and scheduling)", took, timeout, timeout)
			}
			if got := timedOut.Load(); got != 1 {
				t.Errorf("OnWriteTimeout called %d times, want 1", got)
			}

			c, peer := acceptPair(t, l)
			p := bytes.Repeat([]byte("abcdefgh"), 1<<17) // 1 MiB, many chunks
			done := make(chan error, 1)
			go func() {
				got := make([]byte, len(p))
				peer.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err := io.ReadFull(peer, got)
				if err == nil && !bytes.Equal(got, p) {
					err = errors.New("different bytes")
				}
				done <- err
			}()
			c.SetWriteDeadline(time.Time{}) // as fasthttp does around a big response
			if n, err := c.Write(p); n != len(p) || err != nil {
				t.Fatalf("Write of 1 MiB to a reading client = %d, %v", n, err)
			}
			if err := <-done; err != nil {
				t.Fatalf("the client read: %v", err)
			}
			if got := timedOut.Load(); got != 1 {
				t.Errorf("OnWriteTimeout called %d times in all, want 1", got)
			}
		})
	}
}

// A read deadline set on a client connection fires as a timeout, not
// before it.
func TestClientReadDeadline(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			c, _ := acceptPair(t, &Listener{Slack: 10 * time.Millisecond, plain: m.plain})
			start := time.Now()
			c.SetReadDeadline(start.Add(100 * time.Millisecond))
			_, err := c.Read(make([]byte, 16))
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("read with no data: %v, want a timeout", err)
			}
			if took := time.Since(start); took < 100*time.Millisecond {
				t.Errorf("timed out after %v, before the 100ms deadline", took)
			}
		})
	}
}

// upstreamDial is Dialer, or with plain a dialer of the portable
// plainUpstreamConn, which Dialer makes only where upstreamConn does not
// run.
func upstreamDial(plain bool) fasthttp.DialFunc {
	if !plain {
		return Dialer(time.Second)
	}
	return func(addr string) (net.Conn, error) {
		c, err := fasthttp.DialTimeout(addr, time.Second)
		if err != nil {
			return nil, err
		}
		return &plainUpstreamConn{Conn: c}, nil
	}
}

// observed records what an Upstream's Duration is given.
type observed struct{ n atomic.Int64 }

func (o *observed) Observe(float64) { o.n.Add(1) }

var _ Observer = (*observed)(nil)

// Upstream.Do over either kind of pooled connection: answers come back on
// a reused connection, each is timed once, and an upstream that does not
// answer in time is a timeout.
func TestUpstreamDo(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/slow" {
					time.Sleep(300 * time.Millisecond)
				}
				ctx.SetBodyString("re:" + string(ctx.Path()))
			}}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Shutdown() })
			dial := upstreamDial(m.plain)
			var took observed
			var conns atomic.Int64
			u := &Upstream{Duration: &took, Client: &fasthttp.HostClient{Addr: ln.Addr().String(),
				Dial: func(addr string) (net.Conn, error) { conns.Add(1); return dial(addr) }}}
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for i := range 20 {
				req.SetRequestURI("http://" + u.Client.Addr + "/r" + strings.Repeat("x", i))
				start := time.Now()
				end, err := u.Do(req, resp, start, 5*time.Second, true)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if want := "re:/r" + strings.Repeat("x", i); string(resp.Body()) != want {
					t.Fatalf("request %d: body %q, want %q", i, resp.Body(), want)
				}
				if end.Before(start) {
					t.Fatalf("request %d ended at %v, before it started at %v", i, end, start)
				}
			}
			if got := took.n.Load(); got != 20 {
				t.Errorf("Duration observed %d times for 20 answers, want 20", got)
			}
			if got := conns.Load(); got != 1 {
				t.Errorf("20 requests in turn dialled %d connections, want 1 (kept alive)", got)
			}
			req.SetRequestURI("http://" + u.Client.Addr + "/slow")
			if _, err := u.Do(req, resp, time.Now(), 50*time.Millisecond, true); !errors.Is(err, fasthttp.ErrTimeout) {
				t.Errorf("a request the upstream answers late: %v, want %v", err, fasthttp.ErrTimeout)
			}
			if got := took.n.Load(); got != 20 {
				t.Errorf("Duration observed %d times after a timeout, want still 20", got)
			}
		})
	}
}

// closingServer answers the first request on each connection. Then, with
// idleClose, it closes the connection at once, as an upstream does whose
// keep-alive timeout ends while the connection sits in the edge's pool
// (and says so on closed); otherwise it reads the next request and closes
// the connection without answering, as one does whose timeout ends just
// as the request arrives, or with partial after the first line of an
// answer. With never it answers nothing.
type closingServer struct {
	addr      string
	idleClose bool
	partial   bool
	never     bool
	closed    chan struct{}
	mu        sync.Mutex
	arrived   map[string]int // path: times it arrived
}

func newClosingServer(t *testing.T, idleClose, partial, never bool) *closingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &closingServer{addr: ln.Addr().String(), idleClose: idleClose, partial: partial, never: never,
		closed: make(chan struct{}, 16), arrived: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *closingServer) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for n := 1; ; n++ {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		s.mu.Lock()
		s.arrived[req.URL.Path]++
		s.mu.Unlock()
		if n > 1 || s.never {
			if s.partial {
				io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			}
			return // read, never answered in full
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		if s.idleClose {
			c.Close()
			s.closed <- struct{}{}
			return
		}
	}
}

func (s *closingServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.arrived[path]
}

// Upstream.Do over either kind of pooled connection sends a request again
// on a fresh connection, once, after the upstream closed the pooled one
// under it, where that cannot do its work twice: a replayable request
// that failed before any byte of its answer, and any request found closed
// before it was sent. A request that may not be sent twice and reached
// the upstream is not, and neither is one whose answer had begun or that
// failed on a fresh connection.
func TestUpstreamResendsOnStaleConnection(t *testing.T) {
	cases := []struct {
		name                      string
		idleClose, partial, never bool
		replayable                bool
		wantErr                   bool
		arrivals, resent          int
	}{
		{"replayable, closed as it arrived: resent", false, false, false, true, false, 2, 1},
		{"not replayable, closed as it arrived: not resent", false, false, false, false, true, 1, 0},
		{"not replayable, closed while idle: found before sending, resent", true, false, false, false, false, 1, 1},
		{"replayable, closed while idle: resent", true, false, false, true, false, 1, 1},
		{"replayable, closed once the answer began: not resent", false, true, false, true, true, 1, 0},
		{"replayable, fresh connection fails: not resent", false, false, true, true, true, 1, 0},
	}
	for _, m := range modes {
		for _, tc := range cases {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				s := newClosingServer(t, tc.idleClose, tc.partial, tc.never)
				var resent, dials atomic.Int64
				dial := upstreamDial(m.plain)
				u := &Upstream{Resent: func() { resent.Add(1) }, Client: &fasthttp.HostClient{Addr: s.addr,
					Dial: func(addr string) (net.Conn, error) { dials.Add(1); return dial(addr) }}}
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				if !tc.never {
					req.SetRequestURI("http://" + s.addr + "/warm")
					if _, err := u.Do(req, resp, time.Now(), 5*time.Second, true); err != nil || string(resp.Body()) != "ok" {
						t.Fatalf("warming request: %v, body %q", err, resp.Body())
					}
					if tc.idleClose {
						<-s.closed
					}
				}
				req.SetRequestURI("http://" + s.addr + "/case")
				req.Header.SetMethod("POST")
				req.SetBodyString("{}")
				_, err := u.Do(req, resp, time.Now(), 5*time.Second, tc.replayable)
				if tc.wantErr != (err != nil) {
					t.Errorf("Do = %v, want an error %v", err, tc.wantErr)
				}
				if err == nil && string(resp.Body()) != "ok" {
					t.Errorf("body %q, want ok", resp.Body())
				}
				if got := s.count("/case"); got != tc.arrivals {
					t.Errorf("the request reached the upstream %d times, want %d", got, tc.arrivals)
				}
				if got := resent.Load(); got != int64(tc.resent) {
					t.Errorf("Resent called %d times, want %d", got, tc.resent)
				}
				if want := int64(1 + tc.resent); dials.Load() != want {
					t.Errorf("dialled %d connections, want %d", dials.Load(), want)
				}
			})
		}
	}
}

// Both checks of an idle connection, the non-blocking peek and the short
// read of systems without one, tell an open connection from one the
// upstream closed or sent unasked-for bytes on.
func TestProbe(t *testing.T) {
	checks := []struct {
		name  string
		check func(net.Conn) error
	}{{"probe", probe}, {"readProbe", readProbe}}
	peers := []struct {
		name string
		peer func(net.Conn)
		want error
	}{
		{"open", func(net.Conn) {}, nil},
		{"closed", func(p net.Conn) { p.Close() }, errUpstreamClosed},
		{"bytes", func(p net.Conn) { p.Write([]byte("x")) }, errIdleBytes},
	}
	for _, ck := range checks {
		for _, pc := range peers {
			t.Run(ck.name+"/"+pc.name, func(t *testing.T) {
				// c is a plain TCP connection, as dialled; the accepted
				// end plays the upstream.
				p, c := acceptPair(t, &Listener{plain: true})
				pc.peer(p)
				got := ck.check(c)
				// A FIN or a byte the peer sent may still be on its way:
				// check until the check sees something, for 5 s at most.
				for end := time.Now().Add(5 * time.Second); got == nil && pc.want != nil && time.Now().Before(end); {
					got = ck.check(c)
				}
				if !errors.Is(got, pc.want) {
					t.Errorf("%s on a connection whose peer is %s = %v, want %v", ck.name, pc.name, got, pc.want)
				}
			})
		}
	}
}
