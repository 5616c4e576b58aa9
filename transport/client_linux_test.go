//go:build !portable

// Tests of clientConn, the Linux client connection, which only the native
// Linux build has; portable_test.go runs what both connections share on
// both.

package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// clientPair is a clientConn accepted on loopback and the client's end.
func clientPair(t *testing.T, slack time.Duration) (*clientConn, net.Conn) {
	t.Helper()
	c, peer := acceptPair(t, &Listener{Slack: slack})
	return c.(*clientConn), peer
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
				if strings.Contains(g, "[IO wait") && strings.Contains(g, "transport.(*clientConn).Read(") {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
}

// A write goes out at once, whatever its size.
func TestClientConnWritesAtOnce(t *testing.T) {
	for _, n := range []int{1, WriteBufferSize, 1 << 20} {
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
	full := bytes.Repeat([]byte("a"), WriteBufferSize)
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
