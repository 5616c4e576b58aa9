//go:build !portable

// Tests of clientConn's lazy write deadline, which only the native Linux
// build has (the portable connection sets one per chunk); its small
// socket buffers are Linux's too (internal/sockettest).

package transport

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podium-edge/podium/internal/sockettest"
)

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
	peer := sockettest.DialSmallWindow(t, ln.Addr().String())
	l := &Listener{Listener: ln, Slack: timeout >> 6, WriteTimeout: timeout,
		OnWriteTimeout: func(net.Conn) { timedOut.Add(1) }}
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cc := c.(*clientConn)
	t.Cleanup(func() { cc.Close() })
	cc.SetWriteBuffer(sockettest.BufSize)
	return cc, peer
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
