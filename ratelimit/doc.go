// Package ratelimit limits abusive clients at the edge: per-client token
// buckets (golang.org/x/time/rate) in memory bounded whatever the number of
// clients, keyed by the client address the edge can trust.
//
// The request path, as the proxy wires it:
//
//	ip := ratelimit.ClientIP(peer, xff, trusted)   // who is asking
//	if allow.Contains(ip) { pass }                  // load testers, monitoring
//	l := set.Limiter(route.Policy)                  // per request: reloads swap limiters
//	ok, wait := l.Allow(l.Key(ip, apiKey), now)     // one token
//	if !ok { 429, Retry-After: ratelimit.RetryAfterSeconds(wait) }
//
// None of these allocate for a client the limiter knows. Time is a
// parameter, never read inside, so the caller's one clock read per request
// serves everything and tests drive a fake clock exactly.
//
// Keys: IPv4 by the full address; IPv6 by its /64 (Policy.IPv6Prefix), so
// a host cannot rotate addresses to mint buckets; a header (an API key) by
// a keyed 120-bit hash. Memory: each Limiter holds at most MaxClients
// buckets in 64 shards, each an LRU list; idle buckets are dropped once
// they could only be full, and when a shard is full its least recently
// seen client is forgotten. README.md records the measured bounds.
package ratelimit
