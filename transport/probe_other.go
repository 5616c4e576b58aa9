//go:build !unix

package transport

import "net"

// probe checks an idle pooled connection for a close by the upstream. Go
// offers no non-blocking peek at a socket here (Windows' sockets block,
// and Plan 9 and WebAssembly have none), so it is readProbe's short read.
func probe(c net.Conn) error { return readProbe(c) }
