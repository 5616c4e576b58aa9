package ratelimit

import (
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"net/netip"
)

// Key identifies one client of one policy: an address (IPv4 whole, IPv6
// masked to a prefix) or a hash of a header value. It is a small
// comparable value, used as a map key without allocating; the zero Key is
// the key of an invalid address, shared by every such client.
type Key struct {
	b    [16]byte
	kind keyKind
}

type keyKind uint8

const (
	kindInvalid keyKind = iota
	kindAddr
	kindHeader
)

// KeyFromAddr keys a client address. IPv4 (and IPv4-mapped IPv6, which is
// the same host reached over a dual-stack socket) is keyed by the full
// address. IPv6 is keyed by its first v6prefix bits, so a host that rotates
// through the addresses of its /64 stays one client; v6prefix outside
// 1..128 means DefaultIPv6Prefix. Zones are ignored. An invalid address
// gives the zero Key.
func KeyFromAddr(a netip.Addr, v6prefix int) Key {
	a = a.Unmap()
	switch {
	case a.Is4():
		// As16 of an IPv4 address is its ::ffff:a.b.c.d form, which no
		// masked native IPv6 key can equal below /96, and which is the
		// same host at /96 and above.
		return Key{b: a.As16(), kind: kindAddr}
	case a.Is6():
		if v6prefix < 1 || v6prefix > 128 {
			v6prefix = DefaultIPv6Prefix
		}
		b := a.As16()
		full, rest := v6prefix/8, v6prefix%8
		if rest != 0 {
			b[full] &= ^byte(0xff >> rest)
			full++
		}
		clear(b[full:])
		return Key{b: b, kind: kindAddr}
	}
	return Key{}
}

// Two independent 64-bit hashes make the header key 128 bits wide. The
// seeds are random per process, so a client cannot choose two values that
// collide (and share, or steal, a bucket) and buckets need not survive a
// restart anyway.
var headerSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

// KeyFromHeader keys a client on a header value, such as an API key. The
// value is hashed, not kept: two different values share a bucket only if
// both 64-bit halves of their keyed hashes collide, odds of about n²/2¹²⁹
// for n distinct values, which is never in practice. A header key never
// equals an address key. It does not allocate.
//
// An empty value is a value like any other, so every request without the
// header would share one bucket; Limiter.Key falls back to the address.
func KeyFromHeader(v []byte) Key {
	var k Key
	binary.LittleEndian.PutUint64(k.b[:8], maphash.Bytes(headerSeeds[0], v))
	binary.LittleEndian.PutUint64(k.b[8:], maphash.Bytes(headerSeeds[1], v))
	k.kind = kindHeader
	return k
}

// String describes k for logs and tests: "addr 2001:db8:1:2::",
// "header 3f…", or "invalid". It allocates; keep it off the hot path.
func (k Key) String() string {
	switch k.kind {
	case kindAddr:
		return "addr " + netip.AddrFrom16(k.b).Unmap().String()
	case kindHeader:
		return "header " + hex.EncodeToString(k.b[:])
	}
	return "invalid"
}
