// Package transport is the edge's socket layer: the client connections
// fasthttp's server reads requests from (Listener, FlushBig) and the
// pooled keep-alive connections requests go to an upstream over
// (Upstream). It knows HTTP only as fasthttp frames it, and nothing of
// routing, caching or policy.
//
// It exists to save system calls and timer updates per request. On Linux
// an upstream request is sent from inside the read that waits for its
// answer, so no read(2) comes back empty (upstreamConn); sockets are read
// and written with recvfrom(2) and sendto(2), as HAProxy does, without
// the file layer's steps; a response over fasthttp's write buffer leaves
// in one writev(2) (clientConn); and read and write deadlines reach the
// socket only when a call must wait, at most a slack late, not on every
// request. Measured on a proxied 2 KiB GET at saturation (wrk -t1 -c64,
// perf stat -e 'syscalls:sys_enter_{recvfrom,sendto,read,write}' on the
// edge for 4 s, divided by its own request count), the edge makes 2.8
// recvfrom and 1.9 sendto per request; built with the portable
// connections (go build -tags portable) it makes 3.7 read and 1.9 write:
// 4.7 system calls per request instead of 5.6. The one left over HAProxy's
// 1.9 and 1.9 is the client read that comes back EAGAIN: Go reads a socket
// before parking on it, and waiting first is not race-free on the client
// side, where a pipelined request's readiness can arrive before the read
// starts.
//
// The fast path is an optimisation, not a requirement. Elsewhere than
// Linux, or built with the tag portable, client connections are plain
// net.Conns with the same write timeout (plainClientConn) and upstream
// connections are the dialled net.Conn, whose deadlines Do sets on every
// request, wrapped only to keep the behaviour: a request that finds its
// pooled connection closed by the upstream is sent again on a fresh one
// under the same rule (plainUpstreamConn, exchangeState; see Upstream.Do).
package transport
