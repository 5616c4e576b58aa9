//go:build !linux || portable

package transport

import "net"

// native says whether only the portable connections run here.
const native = false

// newClientConn wraps an accepted connection in the portable
// plainClientConn: clientConn's system calls are Linux's.
func newClientConn(c net.Conn, l *Listener) net.Conn {
	return &plainClientConn{Conn: c, l: l}
}

// expectBig does nothing: a plainClientConn holds no buffer back.
func expectBig(net.Conn) {}
