package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// upconnPair dials a loopback listener whose accepted side serve runs on.
func upconnPair(t *testing.T, serve func(net.Conn)) *upstreamConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		serve(s)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	uc, ok := newUpstreamConn(c).(*upstreamConn)
	if !ok {
		t.Fatal("a TCP connection was not wrapped")
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// TestUpstreamConnReadsOnlyWhenAnswered is the point of upstreamConn: a
// request is sent by the Read that waits for its answer, and no read(2)
// comes back empty, even when the upstream takes its time.
func TestUpstreamConnReadsOnlyWhenAnswered(t *testing.T) {
	const rounds = 50
	arrived := make(chan string, 1)
	uc := upconnPair(t, func(s net.Conn) {
		buf := make([]byte, 64)
		for i := 0; i < rounds; i++ {
			n, err := s.Read(buf)
			if err != nil {
				return
			}
			arrived <- string(buf[:n])
			time.Sleep(time.Duration(i%3) * time.Millisecond)
			if _, err := s.Write(append([]byte("re:"), buf[:n]...)); err != nil {
				return
			}
		}
	})
	buf := make([]byte, 64)
	for i := 0; i < rounds; i++ {
		req := "req" + strings.Repeat("x", i%7)
		if n, err := uc.Write([]byte(req)); err != nil || n != len(req) {
			t.Fatalf("round %d: Write = %d, %v", i, n, err)
		}
		select {
		case got := <-arrived:
			t.Fatalf("round %d: the upstream got %q before Read: the request was not held", i, got)
		case <-time.After(time.Millisecond):
		}
		n, err := uc.Read(buf)
		if err != nil {
			t.Fatalf("round %d: Read: %v", i, err)
		}
		if got, want := string(buf[:n]), "re:"+req; got != want {
			t.Fatalf("round %d: Read = %q, want %q", i, got, want)
		}
		if got := <-arrived; got != req {
			t.Fatalf("round %d: the upstream got %q, want %q", i, got, req)
		}
	}
	if uc.eagain != 0 {
		t.Errorf("%d read(2) calls found nothing; want 0 (each read must follow the poller's readiness)", uc.eagain)
	}
	if uc.held != nil {
		t.Error("a buffer is still held after the last answer")
	}
}

// TestUpstreamConnLargeRequestGoesOutAtOnce: past maxHeldRequest, Write
// sends at once rather than buffering without bound.
func TestUpstreamConnLargeRequestGoesOutAtOnce(t *testing.T) {
	got := make(chan int, 1)
	uc := upconnPair(t, func(s net.Conn) {
		n, _ := io.ReadFull(s, make([]byte, maxHeldRequest+1))
		got <- n
		s.Write([]byte("ok"))
	})
	if _, err := uc.Write(bytes.Repeat([]byte("a"), maxHeldRequest+1)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-got:
		if n != maxHeldRequest+1 {
			t.Fatalf("upstream read %d bytes, want %d", n, maxHeldRequest+1)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a request over maxHeldRequest was held back")
	}
	b := make([]byte, 8)
	n, err := uc.Read(b)
	if err != nil || string(b[:n]) != "ok" {
		t.Fatalf("Read = %q, %v", b[:n], err)
	}
}

// TestUpstreamConnDeadlines: the read deadline bounds the wait for an
// answer, and a send that has to block (the upstream reads nothing) is
// bounded by the write deadline, which reaches the socket only then.
func TestUpstreamConnDeadlines(t *testing.T) {
	t.Run("read", func(t *testing.T) {
		uc := upconnPair(t, func(s net.Conn) { io.Copy(io.Discard, s) })
		uc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		err := requestTimesOut(t, uc, 2*time.Second)
		if !strings.HasPrefix(err.Error(), "read ") {
			t.Errorf("error %q does not read like a read error", err)
		}
	})
	t.Run("write", func(t *testing.T) {
		stop := make(chan struct{})
		uc := upconnPair(t, func(s net.Conn) { <-stop })
		defer close(stop)
		if err := uc.tc.SetWriteBuffer(4096); err != nil {
			t.Fatal(err)
		}
		uc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		uc.SetReadDeadline(time.Now().Add(10 * time.Second))
		// Fill the upstream's receive buffer and our send buffer first,
		// so that the held request cannot go out whole.
		filler := bytes.Repeat([]byte("f"), 32<<20)
		if _, err := uc.Write(filler); err == nil {
			t.Fatal("32 MiB went to a peer that reads nothing: the write deadline did not apply")
		}
		uc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		requestTimesOut(t, uc, 5*time.Second) // the write deadline's 200ms, not the read deadline's 10s
	})
}

// requestTimesOut sends a request on uc and wants its Read to fail with a
// timeout within limit.
func requestTimesOut(t *testing.T, uc *upstreamConn, limit time.Duration) error {
	t.Helper()
	uc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	start := time.Now()
	_, err := uc.Read(make([]byte, 16))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read error = %v, want a timeout", err)
	}
	if d := time.Since(start); d > limit {
		t.Errorf("timed out after %v, want under %v", d, limit)
	}
	return err
}

// TestUpstreamConnIdleCloseReadsAsEOF: an upstream that closed a pooled
// connection while it sat idle gives io.EOF on the next request, as a plain
// net.Conn does, so fasthttp's safe retry of idempotent requests still
// applies (not a timeout, not a reset).
func TestUpstreamConnIdleCloseReadsAsEOF(t *testing.T) {
	uc := upconnPair(t, func(s net.Conn) {})
	time.Sleep(50 * time.Millisecond) // the FIN arrives; the poller may see it
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	uc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	_, err := uc.Read(make([]byte, 16))
	if !errors.Is(err, io.EOF) {
		t.Fatalf("Read error = %v, want io.EOF", err)
	}
}
