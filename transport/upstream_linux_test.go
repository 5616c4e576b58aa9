//go:build !portable

// Tests of upstreamConn, the Linux upstream connection, which only the
// native Linux build has; portable_test.go runs what both connections
// share on both.

package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upconnPair dials a loopback listener whose accepted side serve runs on.
func upconnPair(t *testing.T, serve func(net.Conn)) *upstreamConn {
	t.Helper()
	return upconnPairWith(t, &net.ListenConfig{}, serve)
}

// upconnPairWith is upconnPair with the listener made by lc.
func upconnPairWith(t *testing.T, lc *net.ListenConfig, serve func(net.Conn)) *upstreamConn {
	t.Helper()
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
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
		// Held, not sent: the connection's own state says so, whatever
		// the scheduler did meanwhile.
		if uc.held == nil || string(*uc.held) != req {
			t.Fatalf("round %d: after Write, nothing held: the request was not held until Read", i)
		}
		select {
		case got := <-arrived:
			t.Fatalf("round %d: the upstream got %q before Read: the request was not held", i, got)
		default:
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
	if uc.held != nil || !uc.wrote {
		t.Fatalf("after a Write over maxHeldRequest: held %v, sent %v; want it sent", uc.held != nil, uc.wrote)
	}
	select {
	case n := <-got:
		if n != maxHeldRequest+1 {
			t.Fatalf("upstream read %d bytes, want %d", n, maxHeldRequest+1)
		}
	case <-time.After(30 * time.Second): // only a hang guard: it was sent
		t.Fatal("a request over maxHeldRequest never reached the upstream")
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
		err := requestTimesOut(t, uc, 30*time.Second)
		if !strings.HasPrefix(err.Error(), "read ") {
			t.Errorf("error %q does not read like a read error", err)
		}
	})
	t.Run("write", func(t *testing.T) {
		// Small buffers both ends, locked so autotuning cannot grow them
		// (the accepted socket inherits the listener's SO_RCVBUF, and the
		// window it advertises from the start follows it): a held request
		// of 15 KiB cannot go out whole to a peer that reads nothing.
		lc := &net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return errors.Join(err, serr)
		}}
		stop := make(chan struct{})
		uc := upconnPairWith(t, lc, func(s net.Conn) { <-stop })
		defer close(stop)
		if err := uc.tc.SetWriteBuffer(4096); err != nil {
			t.Fatal(err)
		}
		uc.SetReadDeadline(time.Now().Add(60 * time.Second))
		uc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := uc.Write(bytes.Repeat([]byte("h"), 15<<10)); err != nil || n != 15<<10 || uc.held == nil {
			t.Fatalf("Write of 15 KiB = %d, %v, held %v: want it held", n, err, uc.held != nil)
		}
		start := time.Now()
		_, err := uc.Read(make([]byte, 16))
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read error = %v, want the write deadline's timeout", err)
		}
		// The one wall-clock bound here tells 200 ms from 60 s.
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("gave up after %v, want about 200ms (the write deadline), not the 60s read deadline", d)
		}
		// A write too big to hold goes out at once, under the same deadline.
		uc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := uc.Write(bytes.Repeat([]byte("f"), 1<<20)); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("1 MiB Write to a peer that reads nothing: %v, want the write deadline's timeout", err)
		}
	})
}

// requestTimesOut sends a request on uc and wants its Read to fail with a
// timeout within limit (a hang guard: the deadline itself is the caller's).
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

// arm re-arms the read deadline once per timeout/64 of steady traffic, not
// per exchange; a deadline that fired while the connection sat idle in the
// pool is replaced; and the timeout still fires, at most timeout/64 late.
func TestUpstreamConnArmsLazily(t *testing.T) {
	const timeout = 64 * time.Second // re-armed at most once a second
	uc := upconnPair(t, func(s net.Conn) {
		buf := make([]byte, 64)
		for {
			n, err := s.Read(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "hang" {
				continue // never answered
			}
			if _, err := s.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	// exchange arms for deadline d and sends msg; it returns the answer's
	// error.
	exchange := func(i int, msg string, d time.Time, timeout time.Duration) error {
		if err := uc.arm(d, timeout); err != nil {
			t.Fatalf("exchange %d: arm: %v", i, err)
		}
		if _, err := uc.Write([]byte(msg)); err != nil {
			t.Fatalf("exchange %d: write: %v", i, err)
		}
		buf := make([]byte, 64)
		n, err := uc.Read(buf)
		if err == nil && string(buf[:n]) != msg {
			t.Fatalf("exchange %d: got %q, want %q", i, buf[:n], msg)
		}
		return err
	}
	start := time.Now()
	for i := range 30 {
		if err := exchange(i, "ping", time.Now().Add(timeout), timeout); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}
	// One arm, then at most one per timeout/64 that passed, however long
	// this machine took over the 30.
	elapsed := time.Since(start)
	if most := 1 + int(elapsed/(timeout>>6)); uc.rearms > most || uc.rearms >= 30 {
		t.Errorf("30 exchanges over %v armed the read deadline %d times, want at most %d", elapsed, uc.rearms, most)
	}

	// If a deadline is never put on the socket, the watchdog's close fails
	// the read waiting for it instead of hanging the test.
	watchdog := time.AfterFunc(30*time.Second, func() { uc.tc.Close() })
	defer watchdog.Stop()

	// A short deadline left on the socket fires, as it does on a pooled
	// connection after its request; the next exchange must not see it.
	// The read returns when the deadline fires, however late this machine
	// gets to it: no echo has to come back within the short deadline.
	if err := uc.arm(time.Now().Add(50*time.Millisecond), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	fired := uc.readDL
	var ne net.Error
	if _, err := uc.Read(make([]byte, 64)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("waiting on the short deadline: %v, want a timeout", err)
	}
	if now := time.Now(); now.Before(fired) {
		t.Fatalf("the read timed out at %v, before the deadline on the socket (%v)", now, fired)
	}
	if err := exchange(101, "after idle", time.Now().Add(timeout), timeout); err != nil {
		t.Fatalf("an exchange after a deadline fired in the pool: %v", err)
	}

	// A request never answered times out, with the deadline on the socket
	// at most timeout/64 after the one asked for.
	const short = 200 * time.Millisecond
	start = time.Now()
	d := start.Add(short)
	if err := uc.arm(d, short); err != nil {
		t.Fatal(err)
	}
	if late := uc.readDL.Sub(d); late < 0 || late > short>>6 {
		t.Errorf("deadline for %v armed %v after it, want 0 .. %v", short, late, short>>6)
	}
	err := exchange(102, "hang", d, short)
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("unanswered request: %v, want a timeout", err)
	}
	if took := time.Since(start); took < short {
		t.Errorf("timed out after %v, before the %v deadline", took, short)
	}
}
