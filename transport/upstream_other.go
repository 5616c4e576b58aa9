//go:build !linux || portable

package transport

import "net"

// newUpstreamConn wraps a dialled connection in a plainUpstreamConn.
func newUpstreamConn(c net.Conn) net.Conn { return &plainUpstreamConn{Conn: c} }
