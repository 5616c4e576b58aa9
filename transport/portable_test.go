package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
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
			dial := Dialer(time.Second)
			if m.plain {
				dial = func(addr string) (net.Conn, error) { return fasthttp.DialTimeout(addr, time.Second) }
			}
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
