//go:build !portable

// Benchmarks of clientConn, which only the native Linux build has.

package transport

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// benchClientConn is a clientConn accepted on loopback whose peer reads
// and discards everything, for the write path's cost per call.
func benchClientConn(b *testing.B) *clientConn {
	b.Helper()
	c, peer := acceptPair(b, &Listener{Slack: time.Second >> 6, WriteTimeout: 30 * time.Second})
	go io.Copy(io.Discard, peer)
	return c.(*clientConn)
}

// BenchmarkClientConnWrite is one 2 KiB response written to a client that
// keeps up: the common case, where no send waits and no write deadline
// is ever put on the socket.
func BenchmarkClientConnWrite(b *testing.B) {
	c := benchClientConn(b)
	p := bytes.Repeat([]byte("a"), 2048)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		c.SetWriteDeadline(time.Time{}) // as fasthttp does around a flushBig response
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientConnWriteBig writes 256 KiB at a time, more than the
// socket takes at once, so sends wait and the write timeout is armed.
func BenchmarkClientConnWriteBig(b *testing.B) {
	c := benchClientConn(b)
	p := bytes.Repeat([]byte("a"), 256<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
	}
}
