// A Node HTTP upstream with a short keep-alive timeout, for the edge's
// stale-connection test (upstream_stale_test.go). Node closes a keep-alive
// connection that has been idle for server.keepAliveTimeout (5 s by
// default); here it is argv[2] milliseconds.
//
// It prints {"port": N} on its first line of output once it listens.
// GET /stats (ask it directly, not through the edge) answers
//   {"open": sockets that served a request and are still open,
//    "serverClosed": of those, how many Node closed itself (keep-alive
//                    timeout) rather than the peer,
//    "requests": requests served, "posts": {"<X-Seq>": times seen}}
// /ping answers pong and is not counted.
'use strict';
const http = require('http');

const keepAliveMs = parseInt(process.argv[2] || '100', 10);
let open = 0, serverClosed = 0, requests = 0;
const posts = {};

const server = http.createServer((req, res) => {
  if (req.url === '/ping' || req.url === '/stats') {
    req.resume();
    const body = req.url === '/ping' ? 'pong' :
      JSON.stringify({open, serverClosed, requests, posts});
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.end(body);
    return;
  }
  const sock = req.socket;
  if (!sock.podiumCounted) {
    sock.podiumCounted = true;
    open++;
    sock.on('end', () => { sock.podiumPeerClosed = true; });
    sock.on('close', () => {
      open--;
      if (!sock.podiumPeerClosed) serverClosed++;
    });
  }
  requests++;
  res.on('finish', () => {
    // Node 20 sets the idle socket's timeout to keepAliveTimeout plus a
    // 1 s buffer (HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER), so its default
    // 5 s closes after 6 s. Take the buffer off, so the test's idle
    // periods can be short; the close on timeout is still Node's own.
    if (!sock.destroyed && sock.timeout > keepAliveMs) sock.setTimeout(keepAliveMs);
  });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (req.method === 'POST') {
      const seq = req.headers['x-seq'] || '';
      posts[seq] = (posts[seq] || 0) + 1;
    }
    res.writeHead(200, {'Content-Type': 'text/plain'});
    res.end('ok ' + req.method + ' ' + Buffer.concat(chunks).length + '\n');
  });
});
server.keepAliveTimeout = keepAliveMs;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({port: server.address().port}) + '\n');
});
// Exit with the test: stdin closes when the Go test's process ends.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
