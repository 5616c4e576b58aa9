//go:build !linux || portable

package transport

import "net"

// newUpstreamConn returns c as it is: upstreamConn's system calls are
// Linux's, and Do treats c as the plain connection it is.
func newUpstreamConn(c net.Conn) net.Conn { return c }
