// Package waitroom is the core of the edge's waiting room (issue 18): a
// fair queue in front of an on-sale path. It holds the parts that need no
// proxy: the key file (keys.go), the signed place and admission tokens and
// the identity they are bound to (token.go), the stricter path form a
// room is matched on (match.go), and one edge's admission state: a
// watermark over per-millisecond arrival counts, advanced at the room's
// rate, with a history that says when each place was admitted (gate.go),
// and the sorted counts and the view of them that a waiting page's
// position reads without a lock (queue.go).
//
// The proxy asks it as it asks the rate limiter (proxy/waitroom.go): the
// waiting page, the cookie and header, the admin controls and metrics live
// there; config reads key files and patterns with its parsers. A Gate
// counts each identity once (Join), says how many wait ahead of a place
// (Ahead), and keeps its history in a Store: MemStore, or FileStore, which
// outlives the process.
//
// A visitor's place is a token the edge signs: the room, its epoch, a hash
// of the visitor's identity (the rate limiter's client key) and a position
// (pos_ms, pos_tb). Places are ordered by position. Arrivals after the
// room opens are placed by the edge's clock in milliseconds, ties broken
// by the identity hash; arrivals before it are all placed at opens_at and
// ordered by a draw, a keyed hash of the identity, which is the pre-queue
// shuffle. Both come from the identity alone, never from anything random
// in the token, so a visitor gains nothing by fetching a new token: one
// identity has one draw and, after opening, a later arrival is a later
// place.
//
// Time is always a parameter in int64 Unix milliseconds, never read
// inside, so the caller's one clock read serves everything and tests set
// it exactly.
package waitroom
