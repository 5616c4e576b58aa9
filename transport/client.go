package transport

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/valyala/fasthttp"
)

// WriteBufferSize is the size of the buffered writer fasthttp puts in
// front of each client connection; the server's WriteBufferSize must be
// this. A write of exactly this many bytes is that buffer flushed full,
// with the rest of the response to follow (see FlushBig).
const WriteBufferSize = 4096

// Listener makes the client connections it accepts cheaper per request
// (see the package comment): on Linux a TCP connection becomes a
// clientConn, and anything else a plainClientConn. Both bound a send that
// makes no progress by WriteTimeout.
//
// Its fields are set before the first Accept and never change; Accept is
// safe for concurrent use. A Listener must not be copied after first use.
type Listener struct {
	net.Listener

	// Slack is how much later than asked a deadline may fire, so that a
	// keep-alive connection re-arms its socket's deadline about once per
	// Slack rather than once per request. Zero re-arms on every wait.
	Slack time.Duration

	// WriteTimeout bounds a send that makes no progress (nginx's
	// send_timeout), not the whole response. Zero means none.
	WriteTimeout time.Duration

	// OnWriteTimeout, when set, is told of a connection whose send waited
	// WriteTimeout for the client to take a byte; the write then fails
	// and fasthttp closes the connection.
	OnWriteTimeout func(net.Conn)

	// plain has Accept make the portable connection even where the
	// raw one runs, so that tests run the fallback on Linux too.
	plain bool
}

// Accept waits for the next client connection and wraps it.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newClientConn(c, l), nil
}

// FlushBig has fasthttp send a response bigger than half its write buffer
// as soon as it is written, even with a pipelined request waiting:
// fasthttp flushes after a handler that set a write deadline, and the
// zero deadline is no deadline. A response bigger than the whole buffer is
// also marked for the connection, which then sends it in one writev(2)
// (see clientConn). Call it once the handler has set the response.
func FlushBig(ctx *fasthttp.RequestCtx) {
	n := len(ctx.Response.Body())
	if n <= WriteBufferSize/2 || ctx.Response.SkipBody || ctx.IsHead() {
		return
	}
	_ = ctx.SetWriteDeadline(time.Time{})
	if n > WriteBufferSize {
		expectBig(ctx.Conn())
	}
}

// plainChunk is the most that one write of a plainClientConn sends under
// one write-timeout deadline: a send under a deadline set once for the
// whole write would bound the response, not its progress, and end a slow
// but steady download of a big answer.
const plainChunk = 64 << 10

// plainClientConn is the portable client connection, for systems without
// clientConn's system calls: reads are the net.Conn's own, and each write
// goes out in chunks of at most plainChunk, each under the write timeout
// from the time it starts. A client that takes no byte of a chunk for the
// write timeout fails the write, as with clientConn; one that keeps
// taking bytes slower than plainChunk per write timeout fails too, where
// clientConn would wait. It costs a clock read and a deadline update per
// chunk, which clientConn saves.
//
// It is used by one goroutine at a time, as fasthttp's server uses a
// connection; it must not be copied.
type plainClientConn struct {
	net.Conn
	l      *Listener
	wantWD time.Time // the caller's write deadline, a bound on top of the write timeout
}

// SetWriteDeadline records t; each chunk of a write is sent under it or
// the write timeout, whichever comes first.
func (c *plainClientConn) SetWriteDeadline(t time.Time) error {
	c.wantWD = t
	return nil
}

func (c *plainClientConn) SetDeadline(t time.Time) error {
	c.wantWD = t
	return c.Conn.SetReadDeadline(t)
}

func (c *plainClientConn) Write(p []byte) (int, error) {
	n := 0
	for {
		chunk := p[n:]
		if len(chunk) > plainChunk {
			chunk = chunk[:plainChunk]
		}
		d := c.wantWD
		if t := c.l.WriteTimeout; t > 0 {
			if w := time.Now().Add(t); d.IsZero() || w.Before(d) {
				d = w
			}
		}
		if err := c.Conn.SetWriteDeadline(d); err != nil {
			return n, err
		}
		k, err := c.Conn.Write(chunk)
		n += k
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && c.l.OnWriteTimeout != nil {
				c.l.OnWriteTimeout(c)
			}
			return n, err
		}
		if n == len(p) {
			return n, nil
		}
	}
}
